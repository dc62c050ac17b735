package xmpplink

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"

	"mellium.im/xmpp"
	"mellium.im/xmpp/stream"
)

// Why the read loop does not use mellium's Session.TokenReader: mellium
// applies the stream-level rules at every depth, so an element in the
// streams namespace nested in a stanza (any user can send one to us, and a
// bounce echoes the template) came back as a stream error, killed the
// connection and, for <error/>, counted as ejabberd rejecting the batch.
// Here the rules apply between stanzas only.
//
// mellium does not expose its decoder, so the handshake runs on a byteConn:
// a connection that is an io.ByteReader, which encoding/xml reads byte by
// byte without buffering of its own. Nothing mellium read past is lost, and
// what it did read is recorded and replayed into our decoder to restore the
// namespace context of the stream header.

// maxHandshakeBytes bounds the recording: a server streaming features
// forever must not fill memory before the handshake deadline.
const maxHandshakeBytes = 1 << 20

var (
	errHandshakeTooLong = errors.New("xmpplink: handshake over 1 MiB")
	errReplayPastEnd    = errors.New("xmpplink: the handshake ended inside a token")
	errStreamRestart    = errors.New("xmpplink: stream restarted between stanzas")
	errStreamElement    = errors.New("xmpplink: unknown stream-level element")
	errStreamText       = errors.New("xmpplink: text between stanzas")
)

// byteConn reads through a bufio.Reader it owns and records what decoders
// take from it with ReadByte until the stream reader takes over.
type byteConn struct {
	net.Conn
	br        *bufio.Reader
	rec       []byte
	recording bool
}

func newByteConn(c net.Conn) *byteConn {
	return &byteConn{Conn: c, br: bufio.NewReader(c), recording: true}
}

// Read serves a layer above (TLS) and is not recorded: the decoders of
// that layer read the layer's own byteConn.
func (b *byteConn) Read(p []byte) (int, error) { return b.br.Read(p) }

func (b *byteConn) ReadByte() (byte, error) {
	c, err := b.br.ReadByte()
	if err != nil || !b.recording {
		return c, err
	}
	if len(b.rec) >= maxHandshakeBytes {
		return 0, errHandshakeTooLong
	}
	b.rec = append(b.rec, c)
	return c, nil
}

// ConnectionState keeps mellium's view of TLS (SASL reads it) as it was
// without the wrapper.
func (b *byteConn) ConnectionState() tls.ConnectionState {
	if tc, ok := b.Conn.(interface{ ConnectionState() tls.ConnectionState }); ok {
		return tc.ConnectionState()
	}
	return tls.ConnectionState{}
}

// startTLS is mellium's STARTTLS with the TLS connection wrapped in a
// byteConn, for the same reason as the socket.
func startTLS(cfg *tls.Config) xmpp.StreamFeature {
	f := xmpp.StartTLS(cfg)
	negotiate := f.Negotiate
	f.Negotiate = func(ctx context.Context, s *xmpp.Session, data any) (xmpp.SessionState, io.ReadWriter, error) {
		mask, rw, err := negotiate(ctx, s, data)
		if c, ok := rw.(net.Conn); ok && err == nil {
			// Decoders read the TLS layer from now on.
			if under, ok := s.Conn().(*byteConn); ok {
				under.recording, under.rec = false, nil
			}
			rw = newByteConn(c)
		}
		return mask, rw, err
	}
	return f
}

// replayReader gives the recorded handshake, then the live connection once
// live is set; before that, asking for more is a bug, reported as an error
// rather than swallowing a stanza.
type replayReader struct {
	rec  []byte
	live *bufio.Reader
}

func (r *replayReader) ReadByte() (byte, error) {
	if len(r.rec) > 0 {
		c := r.rec[0]
		r.rec = r.rec[1:]
		return c, nil
	}
	if r.live == nil {
		return 0, errReplayPastEnd
	}
	return r.live.ReadByte()
}

func (r *replayReader) Read(p []byte) (int, error) {
	if len(r.rec) > 0 {
		n := copy(p, r.rec)
		r.rec = r.rec[n:]
		return n, nil
	}
	if r.live == nil {
		return 0, errReplayPastEnd
	}
	return r.live.Read(p)
}

// streamReader reads an established stream. Between stanzas (depth 0) it
// applies what mellium did: a stream error is returned as a stream.Error,
// </stream:stream> as io.EOF, other stream elements and text are errors.
// Inside a stanza every element is payload. Comments, processing
// instructions and directives are refused anywhere, as mellium did.
type streamReader struct {
	d     *xml.Decoder
	depth int // elements open below the stream element
}

// newStreamReader takes over reading from the session's byteConn: it
// replays what the handshake read so the decoder knows the stream's
// namespaces and open elements.
func newStreamReader(sess *xmpp.Session) (*streamReader, error) {
	bc, ok := sess.Conn().(*byteConn)
	if !ok {
		return nil, errors.New("xmpplink: the handshake did not read through the connection it was given")
	}
	bc.recording = false
	rec := bc.rec
	bc.rec = nil
	rr := &replayReader{rec: rec}
	d := xml.NewDecoder(rr)
	var open []xml.Name
	for d.InputOffset() < int64(len(rec)) {
		tok, err := d.Token()
		if err != nil {
			return nil, fmt.Errorf("xmpplink: replaying the handshake: %w", err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			open = append(open, t.Name)
		case xml.EndElement:
			open = open[:len(open)-1]
		}
	}
	// Stream restarts (after STARTTLS or SASL) nest in the replay; the
	// innermost header is the live stream. Elements after it are left open by
	// the handshake (a <handshake/> whose end is still pending).
	top := -1
	for i, n := range open {
		if n.Space == stream.NS && n.Local == "stream" {
			top = i
		}
	}
	if top < 0 {
		return nil, errors.New("xmpplink: no stream header in the handshake")
	}
	rr.rec, rr.live = nil, bc.br
	return &streamReader{d: d, depth: len(open) - 1 - top}, nil
}

func (r *streamReader) Token() (xml.Token, error) {
	tok, err := r.d.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case xml.StartElement:
		if r.depth == 0 && t.Name.Space == stream.NS {
			return nil, r.streamElement(t)
		}
		r.depth++
	case xml.EndElement:
		if r.depth == 0 {
			// The decoder matched it to the stream header.
			return nil, io.EOF
		}
		r.depth--
	case xml.CharData:
		if r.depth == 0 && len(bytes.Trim(t, " \t\r\n")) > 0 {
			return nil, errStreamText
		}
	case xml.ProcInst, xml.Comment, xml.Directive:
		return nil, fmt.Errorf("xmpplink: disallowed XML (%T)", tok)
	}
	return tok, nil
}

// streamElement handles an element of the streams namespace between stanzas.
func (r *streamReader) streamElement(start xml.StartElement) error {
	switch start.Name.Local {
	case "error":
		var e stream.Error
		if err := r.d.DecodeElement(&e, &start); err != nil {
			return err
		}
		return e
	case "stream":
		return errStreamRestart
	default:
		return errStreamElement
	}
}
