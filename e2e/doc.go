// Package e2e runs the four announcer services as processes against the real stack
// (Kafka, MariaDB, Redis, ejabberd) and checks what real XMPP clients receive.
package e2e
