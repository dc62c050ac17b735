package xmpplink

import (
	"context"
	"crypto/tls"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"

	"mellium.im/sasl"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"

	"github.com/announcer/announcer/pkg/stanza"
)

const nsBind = "urn:ietf:params:xml:ns:xmpp-bind"

// ClientHandshake returns a Handshake for c2s sessions of user (a bare JID):
// STARTTLS with tlsConfig, SASL (SCRAM preferred, PLAIN inside TLS; not the
// -PLUS variants: channel binding fails against ejabberd 23.01), and the
// resource "<resource>-<tag>-<slot>", so each connection is a session of its
// own the operator can recognise. tag is random per call: senders of other
// nodes, or replicas, log in to the same account, and ejabberd ends the
// older session of a resource taken again (resource_conflict), so two
// senders with one resource would log each other out in turn.
func ClientHandshake(user, password, resource string, tlsConfig *tls.Config) func(ctx context.Context, nc net.Conn, slot int) (*xmpp.Session, error) {
	tag := randomHex(2)
	return func(ctx context.Context, nc net.Conn, slot int) (*xmpp.Session, error) {
		origin, err := jid.Parse(user)
		if err != nil {
			return nil, fmt.Errorf("client: JID %q: %w", user, err)
		}
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if tlsConfig != nil {
			cfg = tlsConfig.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = origin.Domainpart()
		}
		return xmpp.NewClientSession(ctx, origin.Bare(), nc,
			startTLS(cfg),
			xmpp.SASL("", password, sasl.ScramSha256, sasl.ScramSha1, sasl.Plain),
			bindResource(fmt.Sprintf("%s-%s-%d", resource, tag, slot)),
		)
	}
}

// bindResource is resource binding (RFC 6120 §7) that asks for resource.
// mellium's BindResource always asks the server to pick one.
func bindResource(resource string) xmpp.StreamFeature {
	return xmpp.StreamFeature{
		Name:       xml.Name{Space: nsBind, Local: "bind"},
		Necessary:  xmpp.Authn,
		Prohibited: xmpp.Ready,
		Parse: func(_ context.Context, d *xml.Decoder, start *xml.StartElement) (bool, any, error) {
			return true, nil, d.Skip()
		},
		Negotiate: func(_ context.Context, s *xmpp.Session, _ any) (xmpp.SessionState, io.ReadWriter, error) {
			id := "bind-" + randomHex(8)
			req := "<iq type='set' id='" + id + "'><bind xmlns='" + nsBind + "'>"
			if resource != "" {
				req += "<resource>" + string(stanza.AppendEscaped(nil, resource)) + "</resource>"
			}
			req += "</bind></iq>"
			// Raw bytes: re-encoding decoded tokens mangles the namespace
			// declaration, and nothing else writes during negotiation.
			if _, err := io.WriteString(s.Conn(), req); err != nil {
				return 0, nil, fmt.Errorf("bind: %w", err)
			}

			r := s.TokenReader()
			defer r.Close()
			d := xml.NewTokenDecoder(r)
			tok, err := d.Token()
			if err != nil {
				return 0, nil, fmt.Errorf("bind: %w", err)
			}
			start, ok := tok.(xml.StartElement)
			if !ok || start.Name.Local != "iq" {
				return 0, nil, errors.New("bind: expected an IQ answer")
			}
			var resp struct {
				Type  string `xml:"type,attr"`
				ID    string `xml:"id,attr"`
				JID   string `xml:"urn:ietf:params:xml:ns:xmpp-bind bind>jid"`
				Error *struct {
					Inner []struct{ XMLName xml.Name } `xml:",any"`
				} `xml:"error"`
			}
			if err := d.DecodeElement(&resp, &start); err != nil {
				return 0, nil, fmt.Errorf("bind: %w", err)
			}
			if resp.ID != id || resp.Type != "result" {
				cond := ""
				if resp.Error != nil && len(resp.Error.Inner) > 0 {
					cond = resp.Error.Inner[0].XMLName.Local
				}
				return 0, nil, fmt.Errorf("bind: refused (%s %s)", resp.Type, cond)
			}
			j, err := jid.Parse(resp.JID)
			if err != nil {
				return 0, nil, fmt.Errorf("bind: server assigned %q: %w", resp.JID, err)
			}
			s.UpdateAddr(j)
			return xmpp.Ready, nil, nil
		},
	}
}
