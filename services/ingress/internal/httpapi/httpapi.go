// Package httpapi is the REST transport of the ingress (gin): it reads and
// bounds the body, checks the bearer token, hands the request to the use
// case and translates the outcome into a status code — chosen here, in one
// place (statusOf). Every answer, including 404 and 405, is JSON.
package httpapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/sync/semaphore"

	"github.com/announcer/announcer/pkg/metric"
	"github.com/announcer/announcer/pkg/progress"
	"github.com/announcer/announcer/services/ingress/internal/announce"
)

// Routes of the API; api/openapi.yaml documents them and a test holds the two together.
const (
	RouteChannel       = "/v1/announce/channel"
	RouteUsers         = "/v1/announce/users"
	RouteAnnouncements = "/v1/announcements"
	RouteAnnouncement  = "/v1/announcements/:id"
)

// HeaderIdempotencyKey makes a POST safe to retry; HeaderReplayed marks the
// answer to a key seen before.
const (
	HeaderIdempotencyKey = "Idempotency-Key"
	HeaderReplayed       = "Idempotent-Replayed"
)

// Announcer is what the transport needs from the use case.
type Announcer interface {
	// DecodeChannel and DecodeUsers decode the two bodies (a refused one is counted).
	DecodeChannel(body []byte) (announce.Request, error)
	DecodeUsers(body []byte) (announce.Request, error)
	Announce(ctx context.Context, req announce.Request, source string, key announce.Key) (announce.Outcome, error)
	Status(ctx context.Context, id string) (progress.Announcement, error)
	List(ctx context.Context, state string, limit int) ([]progress.Announcement, error)
	Cancel(ctx context.Context, id string) (progress.Announcement, error)
}

// Options configure the API.
type Options struct {
	MaxBodyBytes int64
	// MaxInFlightBytes bounds the request bodies of the announce POSTs
	// being handled at once (a body of unknown length counts as
	// MaxBodyBytes); past it a POST is answered 503 at once, before its
	// body is read. 0: no bound.
	MaxInFlightBytes int64
	// Tokens are the accepted bearer tokens; empty disables auth.
	Tokens []string
}

// ErrorBody is every non-2xx answer.
type ErrorBody struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
	// ID names the announcement a 504 (preview still computing) is about.
	ID string `json:"id,omitempty"`
}

// ListBody is the answer to GET /v1/announcements.
type ListBody struct {
	Announcements []progress.Announcement `json:"announcements"`
}

// defaultListLimit is GET /v1/announcements without limit.
const defaultListLimit = 20

// AcceptedBody is the 202 answer.
type AcceptedBody struct {
	ID string `json:"id"`
}

type api struct {
	svc      Announcer
	opt      Options
	tokens   [][sha256.Size]byte
	log      zerolog.Logger
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	panics   prometheus.Counter
	inFlight *semaphore.Weighted // nil: no bound
}

// New returns the API's router.
func New(svc Announcer, opt Options, log zerolog.Logger, reg prometheus.Registerer) (*gin.Engine, error) {
	if opt.MaxBodyBytes <= 0 {
		return nil, errors.New("httpapi: max body bytes must be > 0")
	}
	ms := metric.New(reg)
	a := &api{
		svc:      svc,
		opt:      opt,
		log:      log.With().Str("component", "httpapi").Logger(),
		requests: ms.CounterVec("http_requests_total", "HTTP requests by route and status code.", "route", "code"),
		duration: ms.HistogramVec("http_request_duration_seconds", "HTTP request handling time, including the wait for Kafka's ack.",
			metric.LatencyBuckets(), "route"),
		panics: ms.Counter("http_panics_total", "Handler panics recovered into a 500."),
	}
	if err := ms.Err(); err != nil {
		return nil, fmt.Errorf("httpapi: metrics: %w", err)
	}
	if opt.MaxInFlightBytes > 0 {
		if opt.MaxInFlightBytes < opt.MaxBodyBytes {
			return nil, errors.New("httpapi: max in-flight bytes must hold one request of max body bytes")
		}
		a.inFlight = semaphore.NewWeighted(opt.MaxInFlightBytes)
	}
	// Hash tokens so every comparison is over equal lengths: the length of a
	// configured token must not leak through timing either.
	for _, t := range opt.Tokens {
		a.tokens = append(a.tokens, sha256.Sum256([]byte(t)))
	}

	// Release mode only silences gin's own debug printing (an atomic in gin).
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.HandleMethodNotAllowed = true
	r.RedirectTrailingSlash = false
	r.RedirectFixedPath = false
	r.Use(a.observe, gin.CustomRecoveryWithWriter(io.Discard, a.recovered))
	r.NoRoute(func(c *gin.Context) {
		fail(c, http.StatusNotFound, "path", "no such endpoint: "+c.Request.Method+" "+clip(c.Request.URL.Path))
	})
	r.NoMethod(func(c *gin.Context) {
		fail(c, http.StatusMethodNotAllowed, "method", "method "+clip(c.Request.Method)+" is not allowed here; allowed: "+c.Writer.Header().Get("Allow"))
	})
	v1 := r.Group("/v1", a.auth)
	v1.POST(strings.TrimPrefix(RouteChannel, "/v1"), a.handle(RouteChannel, svc.DecodeChannel))
	v1.POST(strings.TrimPrefix(RouteUsers, "/v1"), a.handle(RouteUsers, svc.DecodeUsers))
	v1.GET(strings.TrimPrefix(RouteAnnouncements, "/v1"), a.list)
	v1.GET(strings.TrimPrefix(RouteAnnouncement, "/v1"), a.status)
	v1.DELETE(strings.TrimPrefix(RouteAnnouncement, "/v1"), a.cancel)
	return r, nil
}

func (a *api) status(c *gin.Context) {
	id := c.Param("id")
	ann, err := a.svc.Status(c.Request.Context(), id)
	if err != nil {
		a.failWith(c, err, id)
		return
	}
	c.JSON(http.StatusOK, ann)
}

func (a *api) cancel(c *gin.Context) {
	id := c.Param("id")
	ann, err := a.svc.Cancel(c.Request.Context(), id)
	if errors.Is(err, announce.ErrEnded) {
		fail(c, http.StatusConflict, "state", "announcement "+clip(id)+" is already "+ann.State)
		return
	}
	if err != nil {
		a.failWith(c, err, id)
		return
	}
	c.JSON(http.StatusOK, ann)
}

func (a *api) list(c *gin.Context) {
	limit := defaultListLimit
	if v, ok := c.GetQuery("limit"); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			fail(c, http.StatusBadRequest, "limit", "limit "+strconv.Quote(clip(v))+": want an integer 1.."+strconv.Itoa(announce.MaxListLimit))
			return
		}
		limit = n
	}
	l, err := a.svc.List(c.Request.Context(), c.Query("state"), limit)
	if err != nil {
		a.failWith(c, err, "")
		return
	}
	c.JSON(http.StatusOK, ListBody{Announcements: l})
}

func (a *api) handle(route string, decode func([]byte) (announce.Request, error)) gin.HandlerFunc {
	return func(c *gin.Context) {
		if a.inFlight != nil {
			// The memory a POST holds grows with its body: bodies, not
			// requests, are what the bound counts.
			n := c.Request.ContentLength
			if n < 0 || n > a.opt.MaxBodyBytes {
				n = a.opt.MaxBodyBytes
			}
			n = max(n, 1)
			if !a.inFlight.TryAcquire(n) {
				c.Header("Retry-After", "1")
				fail(c, http.StatusServiceUnavailable, "", "too many announcements in flight ("+
					strconv.FormatInt(a.opt.MaxInFlightBytes, 10)+" bytes of requests): retry later")
				return
			}
			defer a.inFlight.Release(n)
		}
		body, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, a.opt.MaxBodyBytes))
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				fail(c, http.StatusRequestEntityTooLarge, "body", "request body is larger than "+strconv.FormatInt(mbe.Limit, 10)+" bytes")
				return
			}
			fail(c, http.StatusBadRequest, "body", "reading the request body: "+err.Error())
			return
		}
		req, err := decode(body)
		var key announce.Key
		if err == nil {
			key, err = announce.NewKey(announce.SourceREST, c.GetHeader(HeaderIdempotencyKey), route, body)
		}
		var out announce.Outcome
		if err == nil {
			out, err = a.svc.Announce(c.Request.Context(), req, announce.SourceREST, key)
		}
		// Only an answer that names the announcement says it is a replay.
		if out.Replayed && err == nil {
			c.Header(HeaderReplayed, "true")
		}
		switch {
		case err != nil:
			a.failWith(c, err, out.ID)
		case out.Preview != nil:
			c.JSON(http.StatusOK, out.Preview)
		default:
			c.JSON(http.StatusAccepted, AcceptedBody{ID: out.ID})
		}
	}
}

// failWith answers err; id names the announcement it is about, if any.
func (a *api) failWith(c *gin.Context, err error, id string) {
	code, field, msg := statusOf(err)
	if code >= 500 && code != http.StatusServiceUnavailable && code != http.StatusNotImplemented && code != http.StatusGatewayTimeout {
		a.log.Error().Err(err).Msg("request failed")
	}
	switch code {
	case http.StatusServiceUnavailable:
		c.Header("Retry-After", "1")
	case http.StatusNotFound:
		msg = "no announcement " + clip(id)
	case http.StatusGatewayTimeout:
		c.AbortWithStatusJSON(code, ErrorBody{Error: msg + "; poll GET " + RouteAnnouncements + "/" + id, ID: id})
		return
	}
	fail(c, code, field, msg)
}

// statusOf is the one place that maps use-case outcomes to HTTP.
func statusOf(err error) (code int, field, msg string) {
	var ve *announce.ValidationError
	switch {
	case errors.As(err, &ve):
		return http.StatusBadRequest, ve.Field, ve.Error()
	case errors.Is(err, announce.ErrTooLarge):
		return http.StatusRequestEntityTooLarge, "body", err.Error()
	case errors.Is(err, announce.ErrUnavailable):
		return http.StatusServiceUnavailable, "", "not accepted, retry later: " + err.Error()
	case errors.Is(err, announce.ErrStoreDown):
		return http.StatusServiceUnavailable, "", "unavailable, retry later: " + err.Error()
	case errors.Is(err, announce.ErrKeyReused):
		return http.StatusConflict, HeaderIdempotencyKey, err.Error()
	case errors.Is(err, announce.ErrNoStore):
		return http.StatusNotImplemented, "", err.Error()
	case errors.Is(err, progress.ErrNotFound):
		return http.StatusNotFound, "id", err.Error()
	case errors.Is(err, announce.ErrPreviewTimeout):
		return http.StatusGatewayTimeout, "", err.Error()
	}
	return http.StatusInternalServerError, "", "internal error"
}

// auth checks the bearer token in constant time against every configured token.
func (a *api) auth(c *gin.Context) {
	if len(a.tokens) == 0 {
		return
	}
	scheme, token, ok := strings.Cut(c.GetHeader("Authorization"), " ")
	if ok && strings.EqualFold(scheme, "Bearer") {
		sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
		match := 0
		for i := range a.tokens {
			match |= subtle.ConstantTimeCompare(sum[:], a.tokens[i][:])
		}
		if match == 1 {
			return
		}
	}
	c.Header("WWW-Authenticate", `Bearer realm="announcer"`)
	fail(c, http.StatusUnauthorized, "Authorization", "missing or invalid bearer token")
}

// observe counts every request by route and status instead of logging it.
func (a *api) observe(c *gin.Context) {
	start := time.Now()
	c.Next()
	route := c.FullPath()
	if route == "" {
		route = "unmatched"
	}
	a.requests.WithLabelValues(route, strconv.Itoa(c.Writer.Status())).Inc()
	a.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
}

func (a *api) recovered(c *gin.Context, v any) {
	a.panics.Inc()
	a.log.Error().Interface("panic", v).Str("path", c.Request.URL.Path).Msg("handler panicked")
	fail(c, http.StatusInternalServerError, "", "internal error")
}

func fail(c *gin.Context, code int, field, msg string) {
	c.AbortWithStatusJSON(code, ErrorBody{Error: msg, Field: field})
}

func clip(s string) string {
	if len(s) > 128 {
		return s[:128] + "…"
	}
	return s
}
