package kafkabus

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// Cluster is a Kafka cluster: its bootstrap brokers and how to connect to them.
// The zero TLS and SASL are plaintext without authentication.
type Cluster struct {
	Brokers []string
	TLS     *tls.Config
	SASL    sasl.Mechanism
}

// Plaintext is a cluster reached without TLS or authentication.
func Plaintext(brokers []string) Cluster { return Cluster{Brokers: brokers} }

// SASL mechanisms a cluster may require.
const (
	MechanismPlain       = "PLAIN"
	MechanismScramSHA256 = "SCRAM-SHA-256"
	MechanismScramSHA512 = "SCRAM-SHA-512"
)

// Security says how to connect to a cluster.
type Security struct {
	TLS bool
	// CAFile (PEM) is trusted besides the system's roots; CertFile and KeyFile
	// (PEM, both or neither) are the client's certificate for brokers that ask.
	CAFile, CertFile, KeyFile string
	// SASLMechanism is "" (none), MechanismPlain, MechanismScramSHA256 or MechanismScramSHA512.
	SASLMechanism      string
	Username, Password string
}

// NewCluster reads what sec names (certificates, keys) and returns the cluster.
func NewCluster(brokers []string, sec Security) (Cluster, error) {
	c := Cluster{Brokers: brokers}
	var errs []error
	if sec.TLS {
		cfg, err := tlsConfig(sec)
		if err != nil {
			errs = append(errs, err)
		}
		c.TLS = cfg
	} else if sec.CAFile != "" || sec.CertFile != "" {
		errs = append(errs, errors.New("a CA or client certificate is set but TLS is off"))
	}
	switch sec.SASLMechanism {
	case "":
	case MechanismPlain:
		c.SASL = plain.Mechanism{Username: sec.Username, Password: sec.Password}
	case MechanismScramSHA256, MechanismScramSHA512:
		algo := scram.SHA256
		if sec.SASLMechanism == MechanismScramSHA512 {
			algo = scram.SHA512
		}
		m, err := scram.Mechanism(algo, sec.Username, sec.Password)
		if err != nil {
			errs = append(errs, fmt.Errorf("sasl %s: %w", sec.SASLMechanism, err))
		}
		c.SASL = m
	default:
		errs = append(errs, fmt.Errorf("sasl mechanism %q: want %s, %s or %s", sec.SASLMechanism, MechanismPlain, MechanismScramSHA256, MechanismScramSHA512))
	}
	if sec.SASLMechanism != "" && (sec.Username == "" || sec.Password == "") {
		errs = append(errs, fmt.Errorf("sasl %s needs a username and a password", sec.SASLMechanism))
	}
	return c, errors.Join(errs...)
}

func tlsConfig(sec Security) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if sec.CAFile != "" {
		pem, err := os.ReadFile(sec.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls ca file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool() // no system pool on this platform: the file alone
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls ca file %s: no PEM certificate in it", sec.CAFile)
		}
		cfg.RootCAs = pool
	}
	if (sec.CertFile == "") != (sec.KeyFile == "") {
		return nil, errors.New("tls cert file and key file: set both or neither")
	}
	if sec.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(sec.CertFile, sec.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// transport is a transport of the cluster's own: kafka-go's shared default
// keeps connections (and stale metadata) for the life of the process.
func (c Cluster) transport(topics []string) *kafka.Transport {
	return &kafka.Transport{MetadataTopics: topics, TLS: c.TLS, SASL: c.SASL}
}

// dialer is a dialer of the cluster's brokers; clientID "" is kafka-go's.
func (c Cluster) dialer(clientID string) *kafka.Dialer {
	return &kafka.Dialer{ClientID: clientID, Timeout: 10 * time.Second, DualStack: true, TLS: c.TLS, SASLMechanism: c.SASL}
}
