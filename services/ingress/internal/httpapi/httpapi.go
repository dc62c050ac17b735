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

	"github.com/announcer/announcer/services/ingress/internal/announce"
)

// Routes of the API; api/openapi.yaml documents them and a test holds the two together.
const (
	RouteChannel = "/v1/announce/channel"
	RouteUsers   = "/v1/announce/users"
)

// Announcer is what the transport needs from the use case.
type Announcer interface {
	Announce(ctx context.Context, req announce.Request, source string) (string, error)
}

// Options configure the API.
type Options struct {
	MaxBodyBytes int64
	// Tokens are the accepted bearer tokens; empty disables auth.
	Tokens []string
}

// ErrorBody is every non-2xx answer.
type ErrorBody struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

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
}

// New returns the API's router.
func New(svc Announcer, opt Options, log zerolog.Logger, reg prometheus.Registerer) (*gin.Engine, error) {
	if opt.MaxBodyBytes <= 0 {
		return nil, errors.New("httpapi: max body bytes must be > 0")
	}
	a := &api{
		svc: svc,
		opt: opt,
		log: log.With().Str("component", "httpapi").Logger(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "http_requests_total",
			Help: "HTTP requests by route and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "http_request_duration_seconds",
			Help:    "HTTP request handling time, including the wait for Kafka's ack.",
			Buckets: []float64{.001, .002, .004, .008, .016, .032, .064, .128, .256, .512, 1, 2, 5, 10},
		}, []string{"route"}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "http_panics_total",
			Help: "Handler panics recovered into a 500.",
		}),
	}
	for _, c := range []prometheus.Collector{a.requests, a.duration, a.panics} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("httpapi: metrics: %w", err)
		}
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
	v1.POST(strings.TrimPrefix(RouteChannel, "/v1"), a.handle(announce.DecodeChannel))
	v1.POST(strings.TrimPrefix(RouteUsers, "/v1"), a.handle(announce.DecodeUsers))
	return r, nil
}

func (a *api) handle(decode func([]byte) (announce.Request, error)) gin.HandlerFunc {
	return func(c *gin.Context) {
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
		if err == nil {
			var id string
			id, err = a.svc.Announce(c.Request.Context(), req, announce.SourceREST)
			if err == nil {
				c.JSON(http.StatusAccepted, AcceptedBody{ID: id})
				return
			}
		}
		code, field, msg := statusOf(err)
		if code >= 500 && code != http.StatusServiceUnavailable {
			a.log.Error().Err(err).Msg("announce failed")
		}
		if code == http.StatusServiceUnavailable {
			c.Header("Retry-After", "1")
		}
		fail(c, code, field, msg)
	}
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
