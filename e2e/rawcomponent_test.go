package e2e

import (
	"bufio"
	"context"
	"crypto/sha1" //nolint:gosec // XEP-0114's handshake is SHA-1
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"net"
	"time"
)

// rawComponent is a XEP-0114 connection driven by hand: the handshake, then
// bytes through a buffer with nothing between the writer and ejabberd. The
// delivery benchmark measures its baseline with it.
type rawComponent struct {
	*bufio.Writer
	conn net.Conn
	done chan error // the reader's end
}

// dialRawComponent connects to addr as domain and completes the handshake.
func dialRawComponent(ctx context.Context, addr, domain, secret string) (*rawComponent, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &rawComponent{Writer: bufio.NewWriterSize(conn, 64<<10), conn: conn, done: make(chan error, 1)}
	if err := c.handshake(ctx, domain, secret); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("component %s at %s: %w", domain, addr, err)
	}
	return c, nil
}

func (c *rawComponent) handshake(ctx context.Context, domain, secret string) error {
	if d, ok := ctx.Deadline(); ok {
		_ = c.conn.SetDeadline(d)
	}
	if _, err := fmt.Fprintf(c.conn, "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='%s'>", domain); err != nil {
		return err
	}
	dec := xml.NewDecoder(bufio.NewReader(c.conn))
	header, err := nextStart(dec)
	if err != nil {
		return err
	}
	if header.Name.Local != "stream" {
		return fmt.Errorf("got <%s>, want the stream header", header.Name.Local)
	}
	var id string
	for _, a := range header.Attr {
		if a.Name.Local == "id" {
			id = a.Value
		}
	}
	sum := sha1.Sum([]byte(id + secret)) //nolint:gosec // XEP-0114
	if _, err := fmt.Fprintf(c.conn, "<handshake>%s</handshake>", hex.EncodeToString(sum[:])); err != nil {
		return err
	}
	answer, err := nextStart(dec)
	if err != nil {
		return err
	}
	if answer.Name.Local != "handshake" {
		return fmt.Errorf("handshake refused: <%s>", answer.Name.Local)
	}
	_ = c.conn.SetDeadline(time.Time{})
	// ejabberd stops reading a component that does not read: drain what it sends.
	go func() {
		for {
			if _, err := dec.Token(); err != nil {
				c.done <- err
				return
			}
		}
	}()
	return nil
}

func nextStart(dec *xml.Decoder) (xml.StartElement, error) {
	for {
		tok, err := dec.Token()
		if err != nil {
			return xml.StartElement{}, err
		}
		if el, ok := tok.(xml.StartElement); ok {
			return el, nil
		}
	}
}

// Close ends the stream, waits a little for ejabberd to end its own, and closes the connection.
func (c *rawComponent) Close() error {
	_, _ = c.WriteString("</stream:stream>")
	err := c.Flush()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
	}
	return errors.Join(err, c.conn.Close())
}
