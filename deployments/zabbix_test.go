package deployments

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const zabbixConf = "zabbix/userparameter_announcer.conf"

// userParameters reads "UserParameter=key[*],command" lines.
func userParameters(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, line := range strings.Split(string(readFile(t, zabbixConf)), "\n") {
		rest, ok := strings.CutPrefix(line, "UserParameter=")
		if !ok {
			continue
		}
		key, cmd, ok := strings.Cut(rest, ",")
		if !ok {
			t.Fatalf("UserParameter without a command: %q", line)
		}
		out[key] = cmd
	}
	return out
}

var zabbixRef = regexp.MustCompile(`\$\$|\$[0-9]`)

// zabbixExpand does what the agent does to a flexible UserParameter's command: $1..$9 become
// the item's parameters, $$ a literal $.
func zabbixExpand(cmd string, params ...string) string {
	return zabbixRef.ReplaceAllStringFunc(cmd, func(ref string) string {
		if ref == "$$" {
			return "$"
		}
		i := int(ref[1] - '0')
		if i == 0 {
			return cmd
		}
		if i <= len(params) {
			return params[i-1]
		}
		return ""
	})
}

func runItem(t *testing.T, cmd string, params ...string) string {
	t.Helper()
	out, err := exec.Command("sh", "-c", zabbixExpand(cmd, params...)).CombinedOutput()
	if err != nil {
		t.Fatalf("item %v: %v\n%s", params, err, out)
	}
	return strings.TrimSpace(string(out))
}

// The items run against a real Prometheus exposition of the sender's gauge (same name, same
// const label as services/sender registers), served over HTTP, through sh, curl and awk.
func TestZabbixUserParameters(t *testing.T) {
	for _, tool := range []string{"sh", "curl", "awk"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	items := userParameters(t)
	conn, ok := items["announcer.sender.conn[*]"]
	if !ok {
		t.Fatalf("no announcer.sender.conn[*] in %s (have %v)", zabbixConf, items)
	}
	ready, ok := items["announcer.ready[*]"]
	if !ok {
		t.Fatalf("no announcer.ready[*] in %s", zabbixConf)
	}

	reg := prometheus.NewRegistry()
	for node, up := range map[string]float64{"node1": 2, "node10": 5, "node2": 0} {
		g := prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "announcer", Subsystem: "sender", Name: "connections_up",
			Help: "Component connections up.", ConstLabels: prometheus.Labels{"node": node},
		})
		g.Set(up)
		reg.MustRegister(g)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	notReady := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
	}))
	defer notReady.Close()
	port := func(u string) string { p, _ := url.Parse(u); return p.Port() }
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := port("http://" + l.Addr().String())
	_ = l.Close()

	tests := []struct {
		name   string
		cmd    string
		params []string
		want   string
	}{
		{"node1 has 2 connections", conn, []string{port(srv.URL), "node1"}, "2"},
		{"node10 is not node1", conn, []string{port(srv.URL), "node10"}, "5"},
		{"no connection up", conn, []string{port(srv.URL), "node2"}, "0"},
		{"unknown node", conn, []string{port(srv.URL), "node3"}, "0"},
		{"sender down", conn, []string{closedPort, "node1"}, "0"},
		{"ready", ready, []string{port(srv.URL)}, "1"},
		{"not ready", ready, []string{port(notReady.URL)}, "0"},
		{"down", ready, []string{closedPort}, "0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := runItem(t, tc.cmd, tc.params...); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// README.md shows the same items as the file an operator installs.
func TestReadmeShowsZabbixItems(t *testing.T) {
	readme := string(readFile(t, "README.md"))
	for key, cmd := range userParameters(t) {
		if line := "UserParameter=" + key + "," + cmd; !strings.Contains(readme, line) {
			t.Errorf("README.md does not show %s as in %s", key, zabbixConf)
		}
	}
}

// The first generation's conn.len[<address>] item keeps its meaning: the
// script writes what the senders report per ejabberd address, the item reads
// it, and a sender that stops answering falls to 0 instead of going stale.
func TestFirstGenerationConnLenItem(t *testing.T) {
	for _, tool := range []string{"bash", "sh", "curl", "awk", "sort", "mktemp"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	connLen, ok := userParameters(t)["conn.len[*]"]
	if !ok {
		t.Fatalf("no conn.len[*] in %s", zabbixConf)
	}
	sender := func(node, address string, up float64) *httptest.Server {
		reg := prometheus.NewRegistry()
		labels := prometheus.Labels{"node": node}
		g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "announcer", Subsystem: "sender", Name: "connections_up", Help: "h", ConstLabels: labels})
		g.Set(up)
		info := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "announcer", Subsystem: "sender", Name: "node_address_info", Help: "h",
			ConstLabels: prometheus.Labels{"node": node, "address": address}})
		info.Set(1)
		reg.MustRegister(g, info)
		return httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	}
	one, two := sender("node1", "10.0.0.1:8889", 4), sender("node2", "10.0.0.2:8889", 1)
	defer two.Close()
	port := func(u string) string { p, _ := url.Parse(u); return p.Port() }
	file := filepath.Join(t.TempDir(), "connections")
	report := func() {
		t.Helper()
		cmd := exec.Command("bash", "zabbix/get_conn_len.sh", port(one.URL), port(two.URL))
		cmd.Env = append(os.Environ(), "ANNOUNCER_CONNECTIONS_FILE="+file)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("get_conn_len.sh: %v\n%s", err, out)
		}
	}
	item := func(address string) string {
		return runItem(t, strings.ReplaceAll(connLen, "/etc/zabbix/connections", file), address)
	}
	report()
	if a, b := item("10.0.0.1:8889"), item("10.0.0.2:8889"); a != "4" || b != "1" {
		t.Fatalf("conn.len %q and %q, want 4 and 1", a, b)
	}
	one.Close()
	report()
	if a := item("10.0.0.1:8889"); a != "0" {
		t.Fatalf("conn.len of a sender that stopped answering: %q, want 0", a)
	}
}
