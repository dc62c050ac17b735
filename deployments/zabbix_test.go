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
	"strconv"
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

// firstGenerationKeys are the lines the first generation's get_conn_len.sh wrote, in its order;
// its Zabbix items were conn.len[<key>].
var firstGenerationKeys = []string{"ejabberd", "http", "redis", "user-activity-api", "mysql", "zookeeper", "kafka", "user-activity-rest-api"}

// The first generation's conn.len[<service>] items keep their meaning: the
// script overwrites a file the first generation's script wrote with the same
// keys, ejabberd from the senders' /metrics and the others counted on their
// ports; each item reads one number, even when an ejabberd address names a
// key, and a sender that stops answering falls to 0 instead of going stale.
func TestFirstGenerationConnLenItem(t *testing.T) {
	for _, tool := range []string{"bash", "sh", "curl", "awk", "mktemp", "wc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	_, errSS := exec.LookPath("ss")
	_, errNetstat := exec.LookPath("netstat")
	if errSS != nil && errNetstat != nil {
		t.Skip("neither ss nor netstat installed")
	}
	connLen, ok := userParameters(t)["conn.len[*]"]
	if !ok {
		t.Fatalf("no conn.len[*] in %s", zabbixConf)
	}
	sender := func(node, address string, up float64) *httptest.Server {
		reg := prometheus.NewRegistry()
		g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "announcer", Subsystem: "sender", Name: "connections_up", Help: "h",
			ConstLabels: prometheus.Labels{"node": node}})
		g.Set(up)
		info := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "announcer", Subsystem: "sender", Name: "node_address_info", Help: "h",
			ConstLabels: prometheus.Labels{"node": node, "address": address}})
		info.Set(1)
		reg.MustRegister(g, info)
		return httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	}
	// Addresses as compose names them: a per-address line would match conn.len[ejabberd] too.
	one, two := sender("node1", "ejabberd:8889", 4), sender("node2", "ejabberd2:8889", 1)
	defer two.Close()
	port := func(u string) string { p, _ := url.Parse(u); return p.Port() }

	// One established connection on a "redis" port: two sockets on this host, as netstat showed them.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	client, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	defer (<-accepted).Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	idle := port("http://" + free.Addr().String())
	_ = free.Close()
	var ports []string
	for _, k := range firstGenerationKeys[1:] {
		ports = append(ports, k+"="+idle)
	}
	ports = append(ports, "redis="+port("http://"+l.Addr().String()))

	file := filepath.Join(t.TempDir(), "connections")
	// What the first generation's script left behind.
	var old strings.Builder
	for i, k := range firstGenerationKeys {
		old.WriteString(k + " " + strconv.Itoa(i+7) + "\n")
	}
	if err := os.WriteFile(file, []byte(old.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	report := func(senderPorts ...string) {
		t.Helper()
		cmd := exec.Command("bash", append([]string{"zabbix/get_conn_len.sh"}, senderPorts...)...)
		cmd.Env = append(os.Environ(), "ANNOUNCER_CONNECTIONS_FILE="+file, "ANNOUNCER_CONN_PORTS="+strings.Join(ports, " "))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("get_conn_len.sh: %v\n%s", err, out)
		}
	}
	item := func(key string) string {
		return runItem(t, strings.ReplaceAll(connLen, "/etc/zabbix/connections", file), key)
	}
	check := func(want map[string]string) {
		t.Helper()
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if lines := strings.Count(string(b), "\n"); lines != len(firstGenerationKeys) {
			t.Errorf("%d lines, want one per first-generation key:\n%s", lines, b)
		}
		for _, k := range firstGenerationKeys {
			w, ok := want[k]
			if !ok {
				w = "0"
			}
			if got := item(k); got != w {
				t.Errorf("conn.len[%s] = %q, want %q (file:\n%s)", k, got, w, b)
			}
		}
	}
	report(port(one.URL), port(two.URL))
	check(map[string]string{"ejabberd": "5", "redis": "2"})
	one.Close()
	report(port(one.URL), port(two.URL))
	check(map[string]string{"ejabberd": "1", "redis": "2"})
}
