package presence

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/services/fanout/internal/audience"
)

// OnlinePath is the user-activity API's endpoint: a JSON array of usernames
// in, the online subset out.
const OnlinePath = "/v1/users/online"

// maxResponseBytes bounds one answer (a subset of at most chunk usernames).
const maxResponseBytes = 16 << 20

// REST is the user-activity REST API presence source. It tells who is online
// but not where, so its users are routed by hash (audience.NoAddress).
type REST struct {
	url     string
	client  *http.Client
	timeout time.Duration
	retry   backoff.Policy
	chunk   int
}

var _ audience.Presence = (*REST)(nil)

// NewREST builds the client from [user-activity-rest-api]; chunk is the
// usernames per request (user_activity_ask_buffer).
func NewREST(c config.UserActivityREST, chunk int) *REST {
	base := c.Address
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = max(c.MaxIdleConn, 1)
	tr.MaxIdleConnsPerHost = max(c.MaxIdleConn, 1)
	tr.IdleConnTimeout = time.Duration(max(c.IdleConnTimeout, 1)) * time.Second
	return &REST{
		url:     strings.TrimRight(base, "/") + OnlinePath,
		client:  &http.Client{Transport: tr},
		timeout: time.Duration(max(c.RequestTimeout, 1)) * time.Millisecond,
		// max_retry keeps its first-generation meaning: retries of one request.
		retry: backoff.Policy{Initial: 20 * time.Millisecond, Max: 500 * time.Millisecond, Attempts: max(c.MaxRetry, 0) + 1},
		chunk: max(chunk, 1),
	}
}

// Close releases idle connections.
func (r *REST) Close() error {
	r.client.CloseIdleConnections()
	return nil
}

// Ping is the readiness check: an empty question must get an answer.
func (r *REST) Ping(ctx context.Context) error {
	_, err := r.ask(ctx, nil)
	return err
}

// Lookup implements audience.Presence.
func (r *REST) Lookup(ctx context.Context, usernames []string, where []string) error {
	if len(where) != len(usernames) {
		return fmt.Errorf("rest presence: %d slots for %d users", len(where), len(usernames))
	}
	for off := 0; off < len(usernames); off += r.chunk {
		end := min(off+r.chunk, len(usernames))
		part := usernames[off:end]
		var online []string
		err := backoff.Retry(ctx, r.retry, func() error {
			var err error
			online, err = r.ask(ctx, part)
			return err
		}, nil)
		if err != nil {
			return err
		}
		set := make(map[string]struct{}, len(online))
		for _, u := range online {
			set[u] = struct{}{}
		}
		for i, u := range part {
			if _, ok := set[u]; ok {
				where[off+i] = audience.NoAddress
			} else {
				where[off+i] = ""
			}
		}
	}
	return nil
}

func (r *REST) ask(ctx context.Context, usernames []string) ([]string, error) {
	if usernames == nil {
		usernames = []string{}
	}
	body, err := json.Marshal(usernames)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("rest presence: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("rest presence: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("rest presence: %s answered %s", r.url, resp.Status)
	}
	online, err := decodeOnline(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return nil, fmt.Errorf("rest presence: answer of %s: %w", r.url, err)
	}
	return online, nil
}

// decodeOnline parses the API's answer: a JSON array of usernames (null = none).
func decodeOnline(r io.Reader) ([]string, error) {
	var online []string
	dec := json.NewDecoder(r)
	if err := dec.Decode(&online); err != nil {
		return nil, fmt.Errorf("want a JSON array of usernames: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("want a JSON array of usernames: trailing data")
	}
	return online, nil
}

// Scan implements audience.Presence: the REST API cannot list online users.
func (r *REST) Scan(context.Context, string, uint64, int) ([]string, uint64, error) {
	return nil, 0, audience.ErrScanUnsupported
}
