// Command announcer-probe is the container healthcheck of the announcer image. The runtime
// image has no shell and no curl, so this static binary GETs one URL (a service's /readyz on
// its debug port) and exits 0 on a 2xx answer, 1 on anything else, 2 on bad usage. On failure
// it prints the status and the start of the body, which Docker keeps in the health log.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() { os.Exit(run(context.Background(), os.Args[1:], os.Stderr)) }

func run(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("announcer-probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", 3*time.Second, "give up after this long")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: announcer-probe [-timeout 3s] URL   (exit 0 when URL answers 2xx)")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 || *timeout <= 0 {
		fs.Usage()
		return 2
	}
	if err := probe(ctx, fs.Arg(0), *timeout); err != nil {
		fmt.Fprintln(stderr, "announcer-probe:", err)
		return 1
	}
	return 0
}

// maxBody bounds what is read of the answer: enough for a readiness reason.
const maxBody = 512

func probe(ctx context.Context, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	// A fresh transport without proxy or keep-alive: one request, nothing left behind.
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: %s, reading body: %w", url, resp.Status, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	return nil
}
