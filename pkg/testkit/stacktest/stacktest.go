// Package stacktest gives integration tests the addresses of the local stack
// (scripts/stack/stack.sh) and unique names so tests never share state.
package stacktest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/announcer/announcer/pkg/config"
)

// Env is where the real servers listen, from the variables `stack.sh env` prints.
type Env struct {
	KafkaBrokers    []string
	MySQLDSN        string // go-sql-driver DSN of the stack's database
	RedisAddr       string
	C2SAddr         string
	ComponentAddr   string
	ComponentDomain string
	ComponentSecret string
	// ComponentSpares are more component domains of the same listener, each with its own
	// secret (SecretFor): one per sender replica, and for tests that must not share a
	// domain with another process.
	ComponentSpares []string
	spares          map[string]spare
	XMPPDomain      string
	EjabberdAPI     string
	EjabberdCtl     string // full ejabberdctl command line of the stack's instance
	XMPPCA          string // the certificate ejabberd's c2s presents (self-signed), for clients that verify it
	StackScript     string // scripts/stack/stack.sh, for tests that run a server of their own
	KafkaLibsDir    string // the Kafka jars the stack's broker runs from
}

// Get returns the stack's addresses. Without them the test is skipped, unless
// ANNOUNCER_REQUIRE_STACK=1 (set by `make test`), where a missing stack fails it.
func Get(t testing.TB) Env {
	t.Helper()
	e := Env{
		KafkaBrokers:    config.SplitList(os.Getenv("ANNOUNCER_KAFKA_BROKERS")),
		MySQLDSN:        os.Getenv("ANNOUNCER_MYSQL_DSN"),
		RedisAddr:       os.Getenv("ANNOUNCER_REDIS_ADDR"),
		C2SAddr:         os.Getenv("ANNOUNCER_XMPP_C2S"),
		ComponentAddr:   os.Getenv("ANNOUNCER_XMPP_COMPONENT"),
		ComponentDomain: os.Getenv("ANNOUNCER_COMPONENT_DOMAIN"),
		ComponentSecret: os.Getenv("ANNOUNCER_COMPONENT_SECRET"),
		spares:          map[string]spare{},
		XMPPDomain:      os.Getenv("ANNOUNCER_XMPP_DOMAIN"),
		EjabberdAPI:     os.Getenv("ANNOUNCER_EJABBERD_API"),
		EjabberdCtl:     os.Getenv("ANNOUNCER_EJABBERDCTL"),
		XMPPCA:          os.Getenv("ANNOUNCER_XMPP_CA"),
		StackScript:     os.Getenv("ANNOUNCER_STACK_SCRIPT"),
		KafkaLibsDir:    os.Getenv("ANNOUNCER_KAFKA_LIBS_DIR"),
	}
	for _, pair := range config.SplitList(os.Getenv("ANNOUNCER_COMPONENT_SPARES")) {
		d, rest, ok1 := strings.Cut(pair, "=")
		secret, addr, ok2 := strings.Cut(rest, "@")
		if ok1 && ok2 {
			e.ComponentSpares = append(e.ComponentSpares, d)
			e.spares[d] = spare{secret: secret, addr: addr}
		}
	}
	if len(e.KafkaBrokers) == 0 || e.MySQLDSN == "" || e.RedisAddr == "" || e.ComponentAddr == "" {
		Missing(t, "integration test: no stack (run `make test`, or eval \"$(scripts/stack/stack.sh env)\")")
	}
	return e
}

// Required reports whether ANNOUNCER_REQUIRE_STACK=1 (set by `make test` and CI):
// then every part of the stack must be there, and a test that would skip fails.
func Required() bool { return os.Getenv("ANNOUNCER_REQUIRE_STACK") == "1" }

// Missing ends a test that lacks part of the stack (a variable of `stack.sh env`, a
// server binary): skipped, or failed under ANNOUNCER_REQUIRE_STACK=1, where a skip
// would hide a broken test.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if Required() {
		t.Fatalf("ANNOUNCER_REQUIRE_STACK=1, and part of the stack is missing: "+format, args...)
	}
	t.Skipf(format, args...)
}

// GetWithTimeout is Get plus a context for the test's calls to the stack:
// it ends after timeout, or when the test does.
func GetWithTimeout(t testing.TB, timeout time.Duration) (Env, context.Context) {
	t.Helper()
	e := Get(t)
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	t.Cleanup(cancel)
	return e, ctx
}

type spare struct{ secret, addr string }

// SecretFor returns the handshake secret of a component domain of the stack.
func (e Env) SecretFor(domain string) string {
	if s, ok := e.spares[domain]; ok {
		return s.secret
	}
	return e.ComponentSecret
}

// AddrFor returns the listener of a component domain of the stack: every spare has its own,
// since ejabberd routes all of a listener's domains to each of its connections.
func (e Env) AddrFor(domain string) string {
	if s, ok := e.spares[domain]; ok {
		return s.addr
	}
	return e.ComponentAddr
}

// Name returns prefix plus a random suffix: a topic, group or database of this test alone.
func Name(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + "_" + hex.EncodeToString(b[:])
}

// ServerPIDs names the pids of the stack's running servers (kafka, mariadb,
// redis, ejabberd…), from `stack.sh status`: benchmarks report their CPU.
// Empty without a stack script or when it cannot answer.
func (e Env) ServerPIDs() map[string]int {
	out := map[string]int{}
	if e.StackScript == "" {
		return out
	}
	st, err := exec.Command("bash", e.StackScript, "status").Output()
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(st), "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[1] == "up" && f[2] == "pid" {
			if pid, err := strconv.Atoi(f[3]); err == nil {
				out[f[0]] = pid
			}
		}
	}
	return out
}
