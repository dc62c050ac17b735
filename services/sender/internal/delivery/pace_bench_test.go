package delivery

import (
	"bufio"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/announcer/announcer/pkg/benchreport"
)

// socketLink writes through a buffer onto a loopback TCP connection whose
// other end this process drains, as ejabberd would: a flush is a write
// system call, and each one wakes the reader.
type socketLink struct {
	bw      *bufio.Writer
	flushes int
}

func (l *socketLink) Slot() int                                   { return 0 }
func (l *socketLink) Write(p []byte) error                        { _, err := l.bw.Write(p); return err }
func (l *socketLink) Flush() error                                { l.flushes++; return l.bw.Flush() }
func (l *socketLink) Fence(context.Context) error                 { return l.Flush() }
func (l *socketLink) FenceMulticast(context.Context) error        { return l.Flush() }
func (l *socketLink) MulticastRefusals() int64                    { return 0 }
func (l *socketLink) Release()                                    {}
func (l *socketLink) Acquire(context.Context, bool) (Link, error) { return l, nil }

// BenchmarkPacedSend sends batches of 1,000 at a rate limit of 50,000
// stanzas/s onto a drained loopback socket, waiting on the limiter for every
// chunk of 64 (the old pacing) or only for debts of MinWait (10 ms, the
// default). It reports the process's CPU per stanza (the sender's and the
// reader's), the flushes (each a write and a wake-up of the reader) and the
// rate kept.
func BenchmarkPacedSend(b *testing.B) {
	users := usernames(1000)
	for _, tt := range []struct {
		name    string
		minWait time.Duration
	}{{"EveryChunk", time.Nanosecond}, {"MinWait", 0}} {
		b.Run(tt.name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = ln.Close() }()
			drained := make(chan error, 1)
			go func() {
				c, err := ln.Accept()
				if err == nil {
					_, err = io.Copy(io.Discard, c)
					_ = c.Close()
				}
				drained <- err
			}()
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			// Closing the connection ends the reader, on every path out.
			defer func() {
				_ = conn.Close()
				if err := <-drained; err != nil {
					b.Error(err)
				}
			}()
			l := &socketLink{bw: bufio.NewWriterSize(conn, 64<<10)}
			s, _ := newSender(b, l, Options{RatePerConn: 50000, MinWait: tt.minWait})
			// The bucket starts full: one batch first, so every measured one is paced.
			if err := s.Deliver(context.Background(), batch(users...)); err != nil {
				b.Fatal(err)
			}
			l.flushes = 0
			cpu0 := benchreport.SelfCPU()
			b.ResetTimer()
			for range b.N {
				if err := s.Deliver(context.Background(), batch(users...)); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			cpu := benchreport.SelfCPU() - cpu0
			stanzas := float64(b.N * len(users))
			b.ReportMetric(float64(cpu.Nanoseconds())/1e3/stanzas, "cpu-us/stanza")
			b.ReportMetric(float64(l.flushes)*1000/stanzas, "flushes/1k-stanzas")
			b.ReportMetric(stanzas/b.Elapsed().Seconds(), "stanzas/s")
		})
	}
}
