package main

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/testkit/kafkatest"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/pkg/testkit/tcpproxy"
	"github.com/announcer/announcer/services/ingress/internal/announce"
	"github.com/announcer/announcer/services/ingress/internal/publisher"
)

// A publish that timed out is over when the request gives up: kafka-go must
// not write it again in the background once the client has its 503. The
// broker connection is stalled (nothing relayed, nothing closed), so the
// first attempt can never land; a retry on a new connection would.
func TestPublishGivesUpWithTheRequest(t *testing.T) {
	env := stacktest.Get(t)
	topic := kafkatest.Topics(t, env.KafkaBrokers, 1, "ingress_bound")[0]
	cfg := baseConfig(env.KafkaBrokers)
	cfg.Ingress.PublishTimeout = config.Duration(time.Second)
	proxy := tcpproxy.New(t, env.KafkaBrokers[0], tcpproxy.Forward)

	// The service's writer, as the stage runtime builds it, every broker
	// connection through the proxy (the stack has one broker).
	o := publishWriterOptions(cfg)
	o.BatchTimeout, o.BatchBytes = cfg.Bus.BatchTimeout.D(), int64(cfg.Bus.MaxMessageBytes)
	o.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, proxy.Addr())
	}
	if o.MaxAttempts != 1 || o.WriteTimeout > cfg.Ingress.PublishTimeout.D() {
		t.Errorf("writer options %+v: want one attempt within the publish timeout", o)
	}
	w := kafkabus.NewWriter(kafkabus.Plaintext(env.KafkaBrokers), o)
	defer w.Close()
	pub, err := publisher.New(w, publisher.Options{AnnouncementsTopic: topic, MaxMessageBytes: cfg.Bus.MaxMessageBytes}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	svc, err := announce.New(pub, nil, limits(cfg), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	req := announce.Request{Usernames: []string{"alice"}, Message: b64(tpl)}

	// Metadata cached and a produce connection open: the next write uses it.
	warm, err := svc.Announce(context.Background(), req, announce.SourceREST, announce.Key{})
	if err != nil {
		t.Fatalf("warm-up publish: %v", err)
	}
	if n := proxy.Stall(); n == 0 {
		t.Fatal("no broker connection to stall")
	}
	start := time.Now()
	lost, err := svc.Announce(context.Background(), req, announce.SourceREST, announce.Key{})
	gaveUp := time.Since(start)
	if !errors.Is(err, announce.ErrUnavailable) {
		t.Fatalf("publish on a stalled connection: %+v, %v; want ErrUnavailable (a 503)", lost, err)
	}
	if limit := cfg.Ingress.PublishTimeout.D() + 500*time.Millisecond; gaveUp > limit {
		t.Errorf("the request gave up after %s, want within %s", gaveUp, limit)
	}

	// With kafka-go's retries a second attempt would land about
	// WriteTimeout + backoff (≤ 1 s) after the first one gave up.
	time.Sleep(3 * time.Second)
	var keys []string
	for _, m := range kafkatest.ReadToEnd(t, env.KafkaBrokers, topic) {
		keys = append(keys, string(m.Key))
	}
	if len(keys) != 1 || keys[0] != warm.ID {
		t.Fatalf("topic holds %v, want only the warm-up %s: a write landed after its 503", keys, warm.ID)
	}
}
