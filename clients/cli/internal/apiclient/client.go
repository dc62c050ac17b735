// Package apiclient is a typed client of the ingress's announcement API
// (POST /v1/announce/*, /v1/announcements). A Client holds only its
// configuration, so one serves concurrent calls.
package apiclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxAnswer bounds what is read of one answer: a list of 1000 announcements
// fits many times over, a misbehaving server does not fill memory.
const maxAnswer = 16 << 20

// PreviewWait is the least a preview's POST waits for its answer: the server
// may take publish_timeout + preview_timeout (at most 50 s, config's
// MaxPreviewWait) before it answers 504 with the id; a client that gives up
// sooner loses that id.
const PreviewWait = 60 * time.Second

// Config says where the API is and how to talk to it.
type Config struct {
	BaseURL string // e.g. http://127.0.0.1:8080; a path prefix is kept
	Token   string // bearer token; empty sends no Authorization header
	// Timeout bounds each HTTP request, each retry getting its own; 0 = 10s.
	Timeout time.Duration
	// PreviewTimeout bounds a preview's POST instead; 0 = the longer of
	// Timeout and PreviewWait.
	PreviewTimeout time.Duration
	HTTPClient     *http.Client // nil = a client of its own
	Retry          Retry
}

// Retry bounds the retries of a request that got no answer, timed out or was
// answered 503. Zero fields take the defaults.
type Retry struct {
	Attempts int           // tries in all, the first included; default 5
	Base     time.Duration // the first wait, doubled each time; default 200ms
	Max      time.Duration // the longest wait, Retry-After included; default 5s
}

// Client talks to one API server.
type Client struct {
	base           string // without a trailing slash
	token          string
	timeout        time.Duration
	previewTimeout time.Duration
	hc             *http.Client
	retry          Retry
}

// shownURL is u fit for an error message: no password, query or fragment,
// where secrets go.
func shownURL(u *url.URL) string {
	v := *u
	v.RawQuery, v.ForceQuery, v.Fragment, v.RawFragment = "", false, "", ""
	if v.User != nil {
		v.User = url.User("…")
	}
	return v.String()
}

// New checks cfg and returns a client.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.BaseURL)
	if err != nil {
		// url.Parse's error quotes the URL, which may hold a password or a token.
		return nil, errors.New("api url: not a valid URL")
	}
	shown := shownURL(u)
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("api url %q: want http://host[:port] or https://host[:port]", shown)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("api url %q: no query, fragment or user info", shown)
	}
	if cfg.Timeout < 0 || cfg.PreviewTimeout < 0 {
		return nil, fmt.Errorf("timeout %v, preview timeout %v: want > 0", cfg.Timeout, cfg.PreviewTimeout)
	}
	c := &Client{
		base:           strings.TrimRight(u.String(), "/"),
		token:          cfg.Token,
		timeout:        cfg.Timeout,
		previewTimeout: cfg.PreviewTimeout,
		hc:             cfg.HTTPClient,
		retry:          cfg.Retry,
	}
	if c.timeout == 0 {
		c.timeout = 10 * time.Second
	}
	if c.previewTimeout == 0 {
		c.previewTimeout = max(c.timeout, PreviewWait)
	}
	if c.hc == nil {
		c.hc = &http.Client{}
	}
	if c.retry.Attempts <= 0 {
		c.retry.Attempts = 5
	}
	if c.retry.Base <= 0 {
		c.retry.Base = 200 * time.Millisecond
	}
	if c.retry.Max <= 0 {
		c.retry.Max = 5 * time.Second
	}
	return c, nil
}

// Target is who an announcement goes to: one channel (AllOnline is the
// channel -1) or a list of users.
type Target struct {
	Channel   *ChannelID
	Usernames []string
}

// ChannelTarget is every online member of one channel.
func ChannelTarget(id ChannelID) Target { return Target{Channel: &id} }

// AllOnline is every online user.
func AllOnline() Target { return ChannelTarget(NumericChannel(-1)) }

// UsersTarget is the named users that are online.
func UsersTarget(usernames []string) Target { return Target{Usernames: usernames} }

// Request is one announcement to make or preview.
type Request struct {
	Target  Target
	Message []byte // the stanza template as XML; sent base64-encoded
	// Persist nil leaves the server's default, which differs by route
	// (channel: false, users: true).
	Persist  *bool
	Priority string // "" leaves the server's default
}

// wireRequest is both bodies; omitempty keeps out what the server would
// take as null or as a field of the other route.
type wireRequest struct {
	ChannelID *ChannelID `json:"channel_id,omitempty"`
	Usernames []string   `json:"usernames,omitempty"`
	Message   string     `json:"message"`
	Persist   *bool      `json:"persist,omitempty"`
	Priority  string     `json:"priority,omitempty"`
	DryRun    bool       `json:"dry_run,omitempty"`
}

func (r Request) encode(dryRun bool) (path string, body []byte, err error) {
	w := wireRequest{
		Message:  base64.StdEncoding.EncodeToString(r.Message),
		Persist:  r.Persist,
		Priority: r.Priority,
		DryRun:   dryRun,
	}
	switch {
	case r.Target.Channel != nil && r.Target.Usernames != nil:
		return "", nil, errors.New("request has both a channel and usernames")
	case r.Target.Channel != nil:
		path, w.ChannelID = "/v1/announce/channel", r.Target.Channel
	case len(r.Target.Usernames) > 0:
		path, w.Usernames = "/v1/announce/users", r.Target.Usernames
	default:
		return "", nil, errors.New("request has neither a channel nor usernames")
	}
	body, err = json.Marshal(w)
	return path, body, err
}

// Accepted is the answer to an announcement.
type Accepted struct {
	ID string
	// Replayed: the server had already accepted this Idempotency-Key and
	// body, and this is that announcement.
	Replayed bool
}

// Announce makes an announcement. A non-empty key is sent as the
// Idempotency-Key, and only then is the POST retried: the same key is what
// makes a retry unable to announce twice.
func (c *Client) Announce(ctx context.Context, req Request, key string) (Accepted, error) {
	path, body, err := req.encode(false)
	if err != nil {
		return Accepted{}, err
	}
	h := http.Header{}
	if key != "" {
		h.Set("Idempotency-Key", key)
	}
	var out struct {
		ID string `json:"id"`
	}
	resp, err := c.do(ctx, call{method: http.MethodPost, path: path, body: body, header: h, retry: key != ""}, func(data []byte) error {
		if err := json.Unmarshal(data, &out); err != nil {
			return err
		}
		if out.ID == "" {
			return errors.New(`no "id"`)
		}
		return nil
	})
	if err != nil {
		return Accepted{}, err
	}
	return Accepted{ID: out.ID, Replayed: resp.Get("Idempotent-Replayed") == "true"}, nil
}

// Preview asks what req would reach without sending anything. A preview that
// does not finish in time is an *Error with Status 504 and the ID to poll; it
// waits for the server's answer PreviewTimeout long, so as to get that ID.
// Each POST that reaches the server starts a dry-run announcement of its own,
// so it is repeated only after a 503 (the server asks for it) or when no
// connection was made, never after a timeout or a dropped connection.
func (c *Client) Preview(ctx context.Context, req Request) (*Announcement, error) {
	path, body, err := req.encode(true)
	if err != nil {
		return nil, err
	}
	var a *Announcement
	var sent string // the id of an answer that is no announcement document: a server that ignored dry_run accepted it
	decode := func(data []byte) error {
		var accepted struct {
			ID     string `json:"id"`
			DryRun *bool  `json:"dry_run"`
		}
		if json.Unmarshal(data, &accepted) == nil && accepted.ID != "" && accepted.DryRun == nil {
			sent = accepted.ID
			return nil
		}
		return decodeInto(&a)(data)
	}
	cl := call{method: http.MethodPost, path: path, body: body, retry: true, noResend: true, timeout: c.previewTimeout}
	if _, err = c.do(ctx, cl, decode); err != nil {
		return nil, err
	}
	// An old server ignores dry_run and sends it; say so rather than show it as a preview.
	if sent != "" || !a.DryRun {
		if sent == "" {
			sent = a.ID
		}
		return nil, fmt.Errorf("the server did not treat announcement %s as a dry run: it is being sent", sent)
	}
	return a, nil
}

// Get returns one announcement.
func (c *Client) Get(ctx context.Context, id string) (*Announcement, error) {
	var a *Announcement
	_, err := c.do(ctx, call{method: http.MethodGet, path: "/v1/announcements/" + url.PathEscape(id), retry: true}, decodeInto(&a))
	return a, err
}

// Cancel cancels an announcement and returns it as cancelled. Cancelling one
// already cancelled succeeds (so the DELETE is safe to retry); one already
// done, rejected or failed is an *Error with Status 409.
func (c *Client) Cancel(ctx context.Context, id string) (*Announcement, error) {
	var a *Announcement
	_, err := c.do(ctx, call{method: http.MethodDelete, path: "/v1/announcements/" + url.PathEscape(id), retry: true}, decodeInto(&a))
	return a, err
}

// ListOptions filter List; zero values leave the server's defaults.
type ListOptions struct {
	State State
	Limit int // 1..1000; the server's default is 20
}

// List returns announcements, newest first.
func (c *Client) List(ctx context.Context, opt ListOptions) ([]*Announcement, error) {
	q := url.Values{}
	if opt.State != "" {
		q.Set("state", string(opt.State))
	}
	if opt.Limit != 0 {
		q.Set("limit", strconv.Itoa(opt.Limit))
	}
	var out []*Announcement
	_, err := c.do(ctx, call{method: http.MethodGet, path: "/v1/announcements", query: q, retry: true}, func(data []byte) error {
		var body struct {
			Announcements []json.RawMessage `json:"announcements"`
		}
		if err := json.Unmarshal(data, &body); err != nil {
			return err
		}
		out = make([]*Announcement, 0, len(body.Announcements))
		for i, raw := range body.Announcements {
			a, err := DecodeAnnouncement(raw)
			if err != nil {
				return fmt.Errorf("announcements[%d]: %w", i, err)
			}
			out = append(out, a)
		}
		return nil
	})
	return out, err
}

func decodeInto(a **Announcement) func([]byte) error {
	return func(data []byte) (err error) {
		*a, err = DecodeAnnouncement(data)
		return err
	}
}

type call struct {
	method string
	path   string
	query  url.Values
	body   []byte
	header http.Header
	retry  bool
	// noResend: not repeated once it may have reached the server, unless
	// answered 503.
	noResend bool
	timeout  time.Duration // 0 = the client's
}

// do runs one call, retrying transient failures, and hands a 2xx body to
// decode. It returns the answer's header.
func (c *Client) do(ctx context.Context, cl call, decode func([]byte) error) (http.Header, error) {
	attempts := 1
	if cl.retry {
		attempts = c.retry.Attempts
	}
	for attempt := 1; ; attempt++ {
		h, err := c.once(ctx, cl, decode)
		if err == nil {
			return h, nil
		}
		resend := !cl.noResend || !Reached(err) || StatusOf(err) == http.StatusServiceUnavailable
		if attempt >= attempts || !Transient(err) || !resend || ctx.Err() != nil {
			if attempt > 1 {
				err = fmt.Errorf("after %d attempts: %w", attempt, err)
			}
			return nil, err
		}
		timer := time.NewTimer(c.backoff(attempt, err))
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, fmt.Errorf("%w (last attempt: %w)", ctx.Err(), err)
		case <-timer.C:
		}
	}
}

// backoff is the wait after the attempt-th failure: exponential with jitter
// so that many clients do not come back at once, and never shorter than the
// server's Retry-After.
func (c *Client) backoff(attempt int, err error) time.Duration {
	d := c.retry.Base << min(attempt-1, 16)
	if d > c.retry.Max || d <= 0 {
		d = c.retry.Max
	}
	d = d/2 + rand.N(d/2+1)
	var he *Error
	if errors.As(err, &he) && he.RetryAfter > d {
		d = he.RetryAfter
	}
	return min(d, c.retry.Max)
}

func (c *Client) once(ctx context.Context, cl call, decode func([]byte) error) (http.Header, error) {
	timeout := c.timeout
	if cl.timeout > 0 {
		timeout = cl.timeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	u := c.base + cl.path
	if len(cl.query) > 0 {
		u += "?" + cl.query.Encode()
	}
	var body io.Reader
	if cl.body != nil {
		body = bytes.NewReader(cl.body)
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, u, body)
	if err != nil {
		return nil, err
	}
	for k, v := range cl.header {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "announcer-cli")
	if cl.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, &TransportError{Method: cl.method, Path: cl.path, Err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		// The connection broke mid-answer: as transient as one that never answered.
		return nil, &TransportError{Method: cl.method, Path: cl.path, Err: err}
	}
	if len(data) > maxAnswer {
		return nil, fmt.Errorf("%s %s: answer larger than %d bytes", cl.method, cl.path, maxAnswer)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, newError(cl.method, cl.path, resp, data)
	}
	if err := decode(data); err != nil {
		return nil, fmt.Errorf("%s %s: bad answer (HTTP %d): %w", cl.method, cl.path, resp.StatusCode, err)
	}
	return resp.Header, nil
}

// TransportError is a request that got no complete answer: a refused or
// dropped connection, or a timeout.
type TransportError struct {
	Method, Path string
	Err          error
}

func (e *TransportError) Error() string { return fmt.Sprintf("%s %s: %v", e.Method, e.Path, e.Err) }
func (e *TransportError) Unwrap() error { return e.Err }

// Error is an answer with a status other than 2xx: the status and what the
// server said about it.
type Error struct {
	Method, Path string
	Status       int
	Message      string // the body's "error"; the status text when the body has none
	Field        string // the body's "field", if any
	ID           string // the body's "id": a preview still computing (504)
	RetryAfter   time.Duration
}

func (e *Error) Error() string {
	s := fmt.Sprintf("HTTP %d: %s", e.Status, e.Message)
	if e.Field != "" {
		s += " (field " + e.Field + ")"
	}
	return s
}

func newError(method, path string, resp *http.Response, data []byte) *Error {
	e := &Error{Method: method, Path: path, Status: resp.StatusCode}
	var body struct {
		Error string `json:"error"`
		Field string `json:"field"`
		ID    string `json:"id"`
	}
	if json.Unmarshal(data, &body) == nil && body.Error != "" {
		e.Message, e.Field, e.ID = body.Error, body.Field, body.ID
	} else {
		// Not the API's error shape: a proxy's page, say. The status says more than its HTML.
		e.Message = http.StatusText(resp.StatusCode)
		if e.Message == "" {
			e.Message = resp.Status
		}
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return e
}

// Transient reports whether err may pass by itself: no answer, a timeout, or
// 503. A request carrying the same Idempotency-Key is then safe to repeat.
func Transient(err error) bool {
	var he *Error
	if errors.As(err, &he) {
		return he.Status == http.StatusServiceUnavailable
	}
	var te *TransportError
	if !errors.As(err, &te) {
		return false
	}
	// A certificate the client refuses stays refused.
	var cert *tls.CertificateVerificationError
	return !errors.As(err, &cert)
}

// Reached reports whether the request that failed with err may have reached
// the server: all but a connection that was never made.
func Reached(err error) bool {
	var te *TransportError
	if !errors.As(err, &te) {
		return true
	}
	var op *net.OpError
	return !errors.As(err, &op) || op.Op != "dial"
}

// StatusOf is the HTTP status of err, 0 when it has none.
func StatusOf(err error) int {
	var he *Error
	if errors.As(err, &he) {
		return he.Status
	}
	return 0
}
