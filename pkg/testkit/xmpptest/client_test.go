package xmpptest_test

import (
	"context"
	"testing"
	"time"

	"mellium.im/xmpp/component"
	"mellium.im/xmpp/jid"

	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/pkg/testkit/xmpptest"
)

// A message written on a component connection reaches a logged-in client, decoded, whether the
// client logged in over STARTTLS or in plaintext.
func TestClientReceivesFromComponent(t *testing.T) {
	for _, tc := range []struct {
		name  string
		login func(ctx context.Context, addr, user, domain, password string) (*xmpptest.Client, error)
		tls   bool
	}{
		{"starttls", xmpptest.Login, true},
		{"plaintext", xmpptest.LoginPlaintext, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			receiveFromComponent(t, tc.login, tc.tls)
		})
	}
}

func receiveFromComponent(t *testing.T, login func(ctx context.Context, addr, user, domain, password string) (*xmpptest.Client, error), wantTLS bool) {
	env, ctx := stacktest.GetWithTimeout(t, 20*time.Second)
	// A user of this test alone: the demo users may hold offline messages of earlier runs.
	api := xmpptest.API{Base: env.EjabberdAPI}
	user := stacktest.Name("xt")
	if err := api.Register(ctx, user, env.XMPPDomain, "pw"); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = api.Unregister(context.Background(), user, env.XMPPDomain) }()
	alice, err := login(ctx, env.C2SAddr, user, env.XMPPDomain, "pw")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	if alice.TLS() != wantTLS {
		t.Fatalf("session over TLS: %v, want %v", alice.TLS(), wantTLS)
	}

	conn := testkit.Dial(t, env.ComponentAddr)
	s, err := component.NewSession(ctx, jid.MustParse(env.ComponentDomain), []byte(env.ComponentSecret), conn)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	go func() { _ = s.Serve(nil) }()
	to := alice.JID.String()
	if _, err := conn.Write([]byte("<message to='" + to + "' from='" + env.ComponentDomain + "' type='chat' id='x1'><body>one</body><body>two</body></message>")); err != nil {
		t.Fatal(err)
	}
	msgs, err := alice.Wait(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	m := msgs[0]
	if m.To != to || m.From != env.ComponentDomain || m.ID != "x1" || m.Type != "chat" || m.Children != 2 ||
		len(m.Bodies) != 2 || m.Bodies[0] != "one" || m.Bodies[1] != "two" {
		t.Fatalf("received %+v", m)
	}
}
