package kafkabus_test

import (
	"context"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"hash"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
)

// addScramUser gives the broker a SCRAM user, through the admin API on its PLAINTEXT port
// (what kafka-configs --alter --add-config SCRAM-SHA-…=[password=…] sends).
func addScramUser(t *testing.T, plaintext []string, mechanism, user, password string) {
	t.Helper()
	m, h, size := kafka.ScramMechanismSha256, sha256.New, sha256.Size
	if mechanism == kafkabus.MechanismScramSHA512 {
		m, h, size = kafka.ScramMechanismSha512, func() hash.Hash { return sha512.New() }, sha512.Size
	}
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	const iterations = 4096 // Kafka's minimum
	salted, err := pbkdf2.Key(h, password, salt, iterations, size)
	if err != nil {
		t.Fatal(err)
	}
	c := kafkabus.NewClient(kafkabus.Plaintext(plaintext), 10*time.Second)
	defer c.Close()
	res, err := c.AlterUserScramCredentials(context.Background(), &kafka.AlterUserScramCredentialsRequest{
		Upsertions: []kafka.UserScramCredentialsUpsertion{{Name: user, Mechanism: m, Iterations: iterations, Salt: salt, SaltedPassword: salted}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res.Results {
		if r.Error != nil {
			t.Fatalf("scram user %s: %v", r.User, r.Error)
		}
	}
}

// A cluster that wants TLS and SASL: every mechanism the config offers creates topics,
// writes, reads in a group and answers the readiness ping; a wrong password, a missing CA
// and a client without TLS are refused, and the refusal says why.
func TestSecureCluster(t *testing.T) {
	env := stacktest.Get(t)
	broker, l := stacktest.PrivateKafkaSecure(t, env)
	const scramPassword = "scram-secret-0123"
	addScramUser(t, broker.Brokers(), kafkabus.MechanismScramSHA256, "svc256", scramPassword)
	addScramUser(t, broker.Brokers(), kafkabus.MechanismScramSHA512, "svc512", scramPassword)

	for _, tc := range []struct{ mechanism, user, password string }{
		{kafkabus.MechanismPlain, l.User, l.Password},
		{kafkabus.MechanismScramSHA256, "svc256", scramPassword},
		{kafkabus.MechanismScramSHA512, "svc512", scramPassword},
	} {
		t.Run(tc.mechanism, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c, err := kafkabus.NewCluster([]string{l.Addr}, kafkabus.Security{TLS: true, CAFile: l.CAFile,
				SASLMechanism: tc.mechanism, Username: tc.user, Password: tc.password})
			if err != nil {
				t.Fatal(err)
			}
			if err := kafkabus.Ping(ctx, c); err != nil {
				t.Fatalf("ping: %v", err)
			}
			topic := stacktest.Name("secure")
			if err := kafkabus.EnsureTopics(ctx, c, kafkabus.Topic{Name: topic, Partitions: 2, ReplicationFactor: 1}); err != nil {
				t.Fatal(err)
			}
			w := kafkabus.NewWriter(c, kafkabus.WriterOptions{WriteTimeout: 10 * time.Second, Topics: []string{topic}})
			defer w.Close()
			if err := w.WriteMessages(ctx, kafka.Message{Topic: topic, Key: []byte("k"), Value: []byte(tc.mechanism)}); err != nil {
				t.Fatalf("write: %v", err)
			}
			r := kafkabus.NewReader(c, stacktest.Name("g"), []string{topic}, kafkabus.ReaderOptions{})
			defer r.Close()
			m, err := r.FetchMessage(ctx)
			if err != nil || string(m.Value) != tc.mechanism {
				t.Fatalf("read %q, %v; want %q", m.Value, err, tc.mechanism)
			}
			if err := r.CommitMessages(ctx, m); err != nil {
				t.Fatalf("commit: %v", err)
			}
			client := kafkabus.NewClient(c, 10*time.Second, topic)
			defer client.Close()
			ends, err := client.Offsets(ctx, kafka.LastOffset, map[string][]int{topic: {0, 1}})
			if err != nil || ends[topic][0]+ends[topic][1] != 1 {
				t.Fatalf("log ends %v, %v; want the one record", ends, err)
			}
		})
	}

	refused := func(name string, sec kafkabus.Security, want string) {
		t.Run(name, func(t *testing.T) {
			c, err := kafkabus.NewCluster([]string{l.Addr}, sec)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err = kafkabus.Ping(ctx, c)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("ping: %v; want an error with %q", err, want)
			}
		})
	}
	refused("wrong password", kafkabus.Security{TLS: true, CAFile: l.CAFile, SASLMechanism: kafkabus.MechanismScramSHA512,
		Username: "svc512", Password: "not-it"}, "SASL Authentication Failed")
	refused("unknown CA", kafkabus.Security{TLS: true, SASLMechanism: kafkabus.MechanismPlain, Username: l.User, Password: l.Password},
		"certificate signed by unknown authority")
	// A plaintext client on a TLS port reads the server's TLS alert as garbage: any error will do.
	refused("no TLS", kafkabus.Security{SASLMechanism: kafkabus.MechanismPlain, Username: l.User, Password: l.Password}, "")
}

// What a cluster's settings must hold is said before any connection, all at once.
func TestNewClusterRefusesBadSettings(t *testing.T) {
	_, err := kafkabus.NewCluster([]string{"127.0.0.1:9092"}, kafkabus.Security{
		CAFile: "ca.pem", SASLMechanism: "GSSAPI", Username: "u",
	})
	for _, want := range []string{"TLS is off", `sasl mechanism "GSSAPI"`, "needs a username and a password"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v; want it to say %q", err, want)
		}
	}
	_, err = kafkabus.NewCluster(nil, kafkabus.Security{TLS: true, CAFile: "/nonexistent/ca.pem"})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a missing CA file: %v; want it to say the file does not exist", err)
	}
}
