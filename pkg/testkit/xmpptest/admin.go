package xmpptest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// API calls ejabberd's HTTP API (mod_http_api), e.g. http://127.0.0.1:5280/api.
type API struct {
	Base   string
	Client *http.Client // nil: a new connection per call
}

// Call posts args to /api/<command> and returns the raw answer.
func (a API) Call(ctx context.Context, command string, args any) ([]byte, error) {
	body, err := json.Marshal(args)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(a.Base, "/")+"/"+command, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	hc := a.Client
	if hc == nil {
		// No keep-alive by default: an idle connection would outlive the test (goleak).
		hc = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return out, fmt.Errorf("ejabberd api %s: %s: %s", command, resp.Status, out)
	}
	return out, nil
}

// Register creates user@host (password = password); an existing user is fine.
func (a API) Register(ctx context.Context, user, host, password string) error {
	out, err := a.Call(ctx, "register", map[string]string{"user": user, "host": host, "password": password})
	if err != nil && !bytes.Contains(out, []byte("already registered")) {
		return err
	}
	return nil
}

// Unregister deletes user@host and its offline messages.
func (a API) Unregister(ctx context.Context, user, host string) error {
	_, err := a.Call(ctx, "unregister", map[string]string{"user": user, "host": host})
	return err
}
