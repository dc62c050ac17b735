package xmpplink

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/announcer/announcer/pkg/metric"
)

// Metrics are the connection-level counters of one node's pool.
type Metrics struct {
	up               prometheus.Gauge
	reconnects       prometheus.Counter
	dialFailures     prometheus.Counter
	pings            prometheus.Counter
	fences           prometheus.Counter
	pingTimeouts     prometheus.Counter
	inboundErrors    *prometheus.CounterVec
	unknownResults   prometheus.Counter
	ignored          prometheus.Counter
	replies          prometheus.Counter
	repliesDropped   prometheus.Counter
	writeStalls      prometheus.Counter
	echoes           prometheus.Counter
	serverCloses     prometheus.Counter
	multicastRefused prometheus.Counter
	address          *prometheus.GaugeVec // address: 1 for the node's listener
}

// NewMetrics registers the pool's metrics on reg (the service's, which names
// and labels them: announcer_sender_…{node}).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	s := metric.Must(reg)
	c := s.Counter
	return &Metrics{
		up:             s.Gauge("connections_up", "Connections to the node whose handshake succeeded and that are alive."),
		reconnects:     c("reconnects_total", "Connections lost and replaced (or attempted to be)."),
		dialFailures:   c("connect_failures_total", "Dials or handshakes that failed (including handshake timeouts)."),
		pings:          c("pings_sent_total", "XEP-0199 pings written (fences, retransmits and keepalives)."),
		fences:         c("fences_total", "Fences confirmed: a ping result proved ejabberd processed everything before it."),
		pingTimeouts:   c("ping_timeouts_total", "Connections declared dead because no ping was answered in time."),
		unknownResults: c("unknown_results_total", "IQ results with an id this process did not send (e.g. another replica's ping)."),
		ignored:        c("inbound_ignored_total", "Inbound stanzas that needed no action (messages or presence to the component)."),
		replies:        c("iq_replies_total", "Answers to IQ requests addressed to the component."),
		repliesDropped: c("iq_replies_dropped_total", "IQ requests left unanswered because the reply queue was full."),
		writeStalls:    c("write_stalls_total", "Connections declared dead because a write made no progress in time."),
		serverCloses:   c("server_closes_total", "Connections the server ended cleanly (a shutdown): the batches fenced on them just before are sent again."),
		echoes:         c("multicast_echoes_total", "Multicast fences come back: XEP-0033 multicasts addressed to this component, proving the service handled the ones before."),
		multicastRefused: c("multicast_refused_total",
			"Multicasts the multicast service refused as a whole (too many addresses for its limits): sent again one stanza per recipient."),
		address: s.GaugeVec("node_address_info",
			"1, labelled with the listener address the node's connections go to.", "address"),
		inboundErrors: s.CounterVec("inbound_errors_total", "Error stanzas ejabberd sent back, by stanza kind and RFC 6120 condition.", "kind", "condition"),
	}
}
