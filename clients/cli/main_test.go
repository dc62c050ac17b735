package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// run as main calls it: the real environment and the real SIGINT subscription.
func TestRun(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer from-env" {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error": "missing bearer token"}`)
			return
		}
		switch r.Method + " " + r.URL.Path {
		case "POST /v1/announce/users":
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, `{"id": "a1"}`)
		case "GET /v1/announcements":
			_, _ = io.WriteString(w, `{"announcements": []}`)
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"error": "no route"}`)
		}
	}))
	defer srv.Close()
	t.Setenv("ANNOUNCER_URL", srv.URL)
	t.Setenv("ANNOUNCER_TOKEN", "from-env")
	file := filepath.Join(t.TempDir(), "m.xml")
	if err := os.WriteFile(file, []byte(`<message to="%s"><body>hi</body></message>`), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		args   []string
		code   int
		stdout string
	}{
		{[]string{"--help"}, 0, "Usage:"},
		{[]string{"list"}, 0, "ID  STATE"},
		{[]string{"send", "--users", "alice", "--file", file, "--no-follow"}, 0, "id=a1\n"},
		{[]string{"send", "--users", "alice"}, 2, ""},
		{[]string{"cancel", "x"}, 1, ""},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tc.args, strings.NewReader(""), &stdout, &stderr)
		if code != tc.code || !strings.Contains(stdout.String(), tc.stdout) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit %d, stdout with %q", tc.args, code, stdout.String(), stderr.String(), tc.code, tc.stdout)
		}
	}
}
