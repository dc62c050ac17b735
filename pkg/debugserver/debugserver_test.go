package debugserver

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/announcer/announcer/pkg/testkit"
)

func TestEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "announcer_test_total", Help: "t"})
	reg.MustRegister(c)
	c.Add(3)
	failing := errors.New("redis: connection refused")
	var redisErr error
	s := New("127.0.0.1:0", reg, true,
		Check{Name: "kafka", Fn: func(context.Context) error { return nil }},
		Check{Name: "redis", Fn: func(context.Context) error { return redisErr }})
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	testkit.Background(t, "debug server", s.Run)
	base := "http://" + s.Addr()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("healthz %d", code)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "announcer_test_total 3") {
		t.Errorf("metrics %d %q", code, body)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("readyz with healthy deps %d", code)
	}
	redisErr = failing
	code, body := get("/readyz")
	var out struct {
		Ready  bool
		Checks map[string]string
	}
	_ = json.Unmarshal([]byte(body), &out)
	if code != 503 || out.Ready || out.Checks["redis"] != failing.Error() || out.Checks["kafka"] != "ok" {
		t.Errorf("readyz with a failing dep: %d %s", code, body)
	}
	if code, _ := get("/debug/pprof/goroutine?debug=1"); code != 200 {
		t.Errorf("pprof %d", code)
	}
	http.DefaultClient.CloseIdleConnections()
}
