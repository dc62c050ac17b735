// Package testuser gives integration tests XMPP users of their own on the
// stack's ejabberd: registered under a unique name, logged in over c2s, and
// removed when the test ends, so no other test's traffic reaches them.
package testuser

import (
	"context"
	"testing"
	"time"

	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/pkg/testkit/xmpptest"
)

// Register creates a fresh user (password = name), removed at test end, and
// returns its name.
func Register(t testing.TB, env stacktest.Env, prefix string) string {
	t.Helper()
	if env.C2SAddr == "" || env.EjabberdAPI == "" {
		stacktest.Missing(t, "integration test: the stack has no c2s listener (ANNOUNCER_XMPP_C2S) or HTTP API (ANNOUNCER_EJABBERD_API)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	api := API(env)
	user := stacktest.Name(prefix)
	if err := api.Register(ctx, user, env.XMPPDomain, user); err != nil {
		t.Fatalf("register %s: %v", user, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = api.Unregister(ctx, user, env.XMPPDomain)
	})
	return user
}

// Login registers a fresh user (password = name) and logs it in.
func Login(t testing.TB, env stacktest.Env, prefix string) *xmpptest.Client {
	t.Helper()
	user := Register(t, env, prefix)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := xmpptest.Login(ctx, env.C2SAddr, user, env.XMPPDomain, user)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// API is the stack's ejabberd HTTP API.
func API(env stacktest.Env) xmpptest.API {
	return xmpptest.API{Base: env.EjabberdAPI}
}

// ComponentDomain picks a component domain no other process uses: spare
// number i of the stack (tests of different packages run concurrently and
// must not receive each other's bounces), or the main one without spares.
func ComponentDomain(env stacktest.Env, i int) string {
	if n := len(env.ComponentSpares); n > 0 {
		return env.ComponentSpares[(n-1-i%n+n)%n]
	}
	return env.ComponentDomain
}
