package commands

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/announcer/announcer/clients/cli/internal/apiclient"
)

const stanza = `<message to="%s" from="announcer.localhost"><body>hello</body></message>` + "\n"

// cli is one in-process run's setup.
type cli struct {
	t          *testing.T
	api        *fakeAPI
	env        map[string]string
	stdin      io.Reader
	interrupts chan os.Signal
	file       string
}

type result struct {
	code           int
	stdout, stderr string
}

func newCLI(t *testing.T) *cli {
	t.Helper()
	file := filepath.Join(t.TempDir(), "msg.xml")
	if err := os.WriteFile(file, []byte(stanza), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &cli{t: t, api: newFakeAPI(t), interrupts: make(chan os.Signal, 2), file: file, stdin: strings.NewReader("")}
	c.env = map[string]string{"ANNOUNCER_URL": c.api.srv.URL}
	return c
}

func (c *cli) environment(stdout, stderr io.Writer) Env {
	return Env{
		Stdin:      c.stdin,
		Stdout:     stdout,
		Stderr:     stderr,
		Getenv:     func(k string) string { return c.env[k] },
		Interrupts: func() (<-chan os.Signal, func()) { return c.interrupts, func() {} },
		HTTPClient: c.api.srv.Client(),
		Retry:      apiclient.Retry{Base: time.Millisecond, Max: 5 * time.Millisecond},
	}
}

func (c *cli) run(args ...string) result {
	c.t.Helper()
	var stdout, stderr syncBuffer
	code := Execute(context.Background(), args, c.environment(&stdout, &stderr))
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// start runs in the background, for tests that act while it follows.
func (c *cli) start(args ...string) (stdout, stderr *syncBuffer, wait func() int) {
	stdout, stderr = &syncBuffer{}, &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- Execute(context.Background(), args, c.environment(stdout, stderr)) }()
	return stdout, stderr, func() int {
		select {
		case code := <-done:
			return code
		case <-time.After(10 * time.Second):
			c.t.Fatalf("run did not end; stderr:\n%s", stderr.String())
			return -1
		}
	}
}

// wantExit waits for a run begun with start and fails the test unless it
// exits with code.
func (c *cli) wantExit(wait func() int, code int, stderr *syncBuffer) {
	c.t.Helper()
	if got := wait(); got != code {
		c.t.Fatalf("exit %d, want %d\nstderr:\n%s", got, code, stderr)
	}
}

// wantDeletes fails the test unless the API saw n DELETEs (cancellations).
func (c *cli) wantDeletes(n int) {
	c.t.Helper()
	if _, deletes, _ := c.api.snapshot(); deletes != n {
		c.t.Errorf("%d DELETEs, want %d", deletes, n)
	}
}

// pipeStdin makes stdin a pipe whose write end the test answers questions
// through; closing it (done when the test ends) ends a read still waiting.
func (c *cli) pipeStdin() *io.PipeWriter {
	in, answer := io.Pipe()
	c.t.Cleanup(func() { answer.Close() })
	c.stdin = in
	return answer
}

func (r result) want(t *testing.T, code int, stdout ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
	for _, s := range stdout {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("stdout lacks %q:\n%s", s, r.stdout)
		}
	}
}

func TestSendFollowsToDone(t *testing.T) {
	c := newCLI(t)
	c.api.script = sendScript()
	r := c.run("send", "--channel", "42", "--file", c.file, "--interval", "2ms")
	r.want(t, ExitOK, "id=ann-1\n",
		"state=done recipients=500 confirmed=490 dead_lettered=10 invalid=0 resent_batches=1 duration=1.5s")
	if !strings.Contains(r.stderr, "100%") {
		t.Errorf("the bar never reached 100%%; stderr:\n%q", r.stderr)
	}
	if !strings.Contains(r.stderr, "recipients so far") {
		t.Errorf("no spinner while resolving; stderr:\n%q", r.stderr)
	}
	if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); len(lines) != 2 || strings.Contains(r.stdout, "\r") {
		t.Errorf("stdout is not the id line and the summary line:\n%q", r.stdout)
	}
	posts, _, _ := c.api.snapshot()
	if len(posts) != 1 {
		t.Fatalf("%d POSTs, want 1", len(posts))
	}
	p := posts[0]
	if p.path != "/v1/announce/channel" || p.body["channel_id"] != float64(42) {
		t.Errorf("POST %s %v, want channel 42 as a number", p.path, p.body)
	}
	if msg, _ := base64.StdEncoding.DecodeString(p.body["message"].(string)); string(msg) != stanza {
		t.Errorf("message %q, want the file's bytes", msg)
	}
	if _, ok := p.body["persist"]; ok {
		t.Errorf("persist sent without --persist: %v", p.body)
	}
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(p.key) {
		t.Errorf("Idempotency-Key %q, want 128 random bits in hex", p.key)
	}
}

func TestSendBodies(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		path string
		want map[string]any
	}{
		{"string channel", []string{"--channel", "news"}, "/v1/announce/channel", map[string]any{"channel_id": "news"}},
		{"all online", []string{"--all-online"}, "/v1/announce/channel", map[string]any{"channel_id": float64(-1)}},
		{"users", []string{"--users", "alice, bob@x", "--persist=false"}, "/v1/announce/users",
			map[string]any{"usernames": []any{"alice", "bob@x"}, "persist": false}},
		{"persist and priority", []string{"--channel", "7", "--persist", "--priority", "high"}, "/v1/announce/channel",
			map[string]any{"channel_id": float64(7), "persist": true, "priority": "high"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCLI(t)
			args := append([]string{"send", "--no-follow", "--file", c.file}, tc.args...)
			c.run(args...).want(t, ExitOK, "id=ann-1\n")
			posts, _, _ := c.api.snapshot()
			if posts[0].path != tc.path {
				t.Errorf("path %s, want %s", posts[0].path, tc.path)
			}
			for k, v := range tc.want {
				if got := posts[0].body[k]; !equalJSON(got, v) {
					t.Errorf("%s = %#v, want %#v", k, got, v)
				}
			}
		})
	}
}

func equalJSON(a, b any) bool {
	as, _ := json.Marshal(a)
	bs, _ := json.Marshal(b)
	return string(as) == string(bs)
}

// wantLines checks that out has lines matching each pattern, anchored at both ends.
func wantLines(t *testing.T, out string, patterns ...string) {
	t.Helper()
	for _, p := range patterns {
		if !regexp.MustCompile(`(?m)^` + p + `$`).MatchString(out) {
			t.Errorf("no line matches %q in:\n%s", p, out)
		}
	}
}

// waitFor waits until buf holds s.
func waitFor(t *testing.T, buf *syncBuffer, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(buf.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("%q never appeared in:\n%s", s, buf)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestSendRetriesWithTheSameKey(t *testing.T) {
	for _, fail := range [][]string{{"503"}, {"drop"}, {"503", "drop", "503"}} {
		t.Run(strings.Join(fail, "+"), func(t *testing.T) {
			c := newCLI(t)
			c.api.postFail = fail
			c.run("send", "--channel", "42", "--file", c.file, "--no-follow", "--idempotency-key", "op-1").want(t, ExitOK, "id=ann-1\n")
			posts, _, _ := c.api.snapshot()
			if len(posts) < len(fail)+1 {
				t.Fatalf("%d POSTs, want %d", len(posts), len(fail)+1)
			}
			for i, p := range posts {
				if p.key != "op-1" {
					t.Errorf("POST %d carried key %q, want op-1", i, p.key)
				}
			}
			if n := len(c.api.order); n != 1 {
				t.Errorf("%d announcements made, want 1", n)
			}
		})
	}
}

// An answer that leaves open whether the announcement was published (a
// proxy's 5xx after the ingress may have published it) gives the key to
// retry with; a refusal (4xx) does not.
func TestSendGivesTheKeyWhenTheAnswerLeavesItOpen(t *testing.T) {
	for fail, open := range map[string]bool{"502": true, "400": false} {
		c := newCLI(t)
		c.api.postFail = []string{fail}
		r := c.run("send", "--users", "alice", "--file", c.file, "--no-follow", "--idempotency-key", "k-9")
		r.want(t, ExitFailed)
		if got := strings.Contains(r.stderr, "--idempotency-key k-9"); got != open {
			t.Errorf("%s: key given %v, want %v:\n%s", fail, got, open, r.stderr)
		}
	}
}

func TestSendGivesUpAfterBoundedRetries(t *testing.T) {
	c := newCLI(t)
	c.api.postFail = []string{"503", "503", "503", "503", "503", "503"}
	r := c.run("send", "--users", "alice", "--file", c.file, "--idempotency-key", "k-7")
	r.want(t, ExitFailed)
	posts, _, _ := c.api.snapshot()
	if len(posts) != 5 {
		t.Errorf("%d POSTs, want 5", len(posts))
	}
	if !strings.Contains(r.stderr, "kafka unavailable") || !strings.Contains(r.stderr, "--idempotency-key k-7") {
		t.Errorf("stderr lacks the server's error or the key to retry with:\n%s", r.stderr)
	}
}

func TestSendReplayedKeyFollowsTheSameAnnouncement(t *testing.T) {
	c := newCLI(t)
	args := []string{"send", "--channel", "42", "--file", c.file, "--no-follow", "--idempotency-key", "same"}
	c.run(args...).want(t, ExitOK, "id=ann-1\n")
	r := c.run(args...)
	r.want(t, ExitOK, "id=ann-1\n")
	if !strings.Contains(r.stderr, "already accepted") {
		t.Errorf("no note of the replay:\n%s", r.stderr)
	}
}

func TestSendConflictingKey(t *testing.T) {
	c := newCLI(t)
	c.run("send", "--channel", "42", "--file", c.file, "--no-follow", "--idempotency-key", "k").want(t, ExitOK)
	r := c.run("send", "--channel", "43", "--file", c.file, "--no-follow", "--idempotency-key", "k")
	r.want(t, ExitFailed)
	for _, s := range []string{"HTTP 409", "reused with a different body", "field Idempotency-Key"} {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("stderr lacks %q:\n%s", s, r.stderr)
		}
	}
}

func TestSendRejected(t *testing.T) {
	c := newCLI(t)
	c.api.script = []func(*apiclient.Announcement){func(a *apiclient.Announcement) {
		a.State, a.Reason = apiclient.StateRejected, "channel_not_accepted"
	}}
	c.run("send", "--channel", "42", "--file", c.file, "--interval", "2ms").
		want(t, ExitFailed, "state=rejected", "reason=channel_not_accepted")
}

func TestFollowBearsBriefOutages(t *testing.T) {
	c := newCLI(t)
	c.api.script = sendScript()
	c.api.getFail = []string{"404", "503", "503"}
	c.run("send", "--channel", "42", "--file", c.file, "--interval", "2ms").want(t, ExitOK, "state=done")
}

func TestFollowGivesUpOnAnError(t *testing.T) {
	c := newCLI(t)
	c.api.script = sendScript()
	c.api.hold = 2
	_, _, wait := c.start("send", "--channel", "42", "--file", c.file, "--interval", "2ms")
	<-c.api.firstGet
	c.api.mu.Lock()
	c.api.token = "now-required"
	c.api.mu.Unlock()
	if code := wait(); code != ExitFailed {
		t.Errorf("exit %d, want %d", code, ExitFailed)
	}
}

func TestFollowGivesUpAfterTheGrace(t *testing.T) {
	c := newCLI(t)
	c.api.getFail = slices.Repeat([]string{"503"}, 1000)
	var stdout, stderr syncBuffer
	env := c.environment(&stdout, &stderr)
	env.PollGrace = 30 * time.Millisecond
	code := Execute(context.Background(), []string{"send", "--channel", "42", "--file", c.file, "--interval", "2ms"}, env)
	if code != ExitFailed || !strings.Contains(stderr.String(), "progress store unavailable") {
		t.Errorf("exit %d, want 1 with the server's error\nstderr:\n%s", code, stderr.String())
	}
}

// interruptWhileSending starts a send held at "sending", and presses Ctrl-C
// once it is being followed.
func interruptWhileSending(t *testing.T, c *cli) (stdout, stderr *syncBuffer, wait func() int) {
	c.api.script = sendScript()
	c.api.hold = 2
	stdout, stderr, wait = c.start("send", "--channel", "42", "--file", c.file, "--interval", "2ms")
	<-c.api.firstGet
	c.interrupts <- os.Interrupt
	return stdout, stderr, wait
}

func TestInterruptYesCancels(t *testing.T) {
	c := newCLI(t)
	c.stdin = strings.NewReader("y\n")
	stdout, stderr, wait := interruptWhileSending(t, c)
	c.wantExit(wait, ExitCancelled, stderr)
	if !strings.Contains(stderr.String(), "Cancel announcement ann-1? [y/N] ") {
		t.Errorf("no question on stderr:\n%s", stderr)
	}
	c.wantDeletes(1)
	if !strings.Contains(stdout.String(), `state=cancelled recipients=`) || !strings.Contains(stdout.String(), `reason="cancelled by request"`) {
		t.Errorf("stdout lacks the cancelled counts:\n%s", stdout)
	}
}

func TestInterruptNoKeepsFollowing(t *testing.T) {
	c := newCLI(t)
	answer := c.pipeStdin()
	stdout, stderr, wait := interruptWhileSending(t, c)
	if _, err := io.WriteString(answer, "n\n"); err != nil { // returns once the question read it
		t.Fatal(err)
	}
	c.api.mu.Lock()
	c.api.released = true
	c.api.mu.Unlock()
	c.wantExit(wait, ExitOK, stderr)
	c.wantDeletes(0)
	if !strings.Contains(stdout.String(), "state=done") || !strings.Contains(stderr.String(), "100%") {
		t.Errorf("did not follow to done:\nstdout:\n%s\nstderr:\n%s", stdout, stderr)
	}
}

func TestSecondInterruptExitsWithoutCancelling(t *testing.T) {
	c := newCLI(t)
	c.pipeStdin() // never answered: the run must end without an answer
	_, stderr, wait := interruptWhileSending(t, c)
	c.interrupts <- os.Interrupt
	c.wantExit(wait, ExitInterrupted, stderr)
	c.wantDeletes(0)
	if !strings.Contains(stderr.String(), "not cancelled") {
		t.Errorf("stderr does not say it was not cancelled:\n%s", stderr)
	}
}

// Ctrl-C again while the cancel waits for a server that does not answer
// ends the run at once, saying the cancel's outcome is not known.
func TestInterruptWhileCancellingStops(t *testing.T) {
	c := newCLI(t)
	c.api.cancelHang, c.api.hungCancel = true, make(chan struct{}, 8)
	c.stdin = strings.NewReader("y\n")
	_, stderr, wait := interruptWhileSending(t, c)
	<-c.api.hungCancel // the DELETE is at the server
	c.interrupts <- os.Interrupt
	c.wantExit(wait, ExitInterrupted, stderr)
	if !strings.Contains(stderr.String(), "may or may not be cancelled") {
		t.Errorf("stderr does not say the cancel's outcome is unknown:\n%s", stderr)
	}
}

func TestInterruptWithoutStdinStops(t *testing.T) {
	c := newCLI(t) // stdin is empty
	_, stderr, wait := interruptWhileSending(t, c)
	c.wantExit(wait, ExitInterrupted, stderr)
	c.wantDeletes(0)
}

func TestInterruptDuringThePost(t *testing.T) {
	c := newCLI(t)
	c.api.postBlock = true
	_, stderr, wait := c.start("send", "--channel", "42", "--file", c.file, "--idempotency-key", "k-9")
	<-c.api.postSeen
	c.interrupts <- os.Interrupt
	c.wantExit(wait, ExitInterrupted, stderr)
	if !strings.Contains(stderr.String(), "--idempotency-key k-9") {
		t.Errorf("stderr lacks the key to retry with:\n%s", stderr)
	}
}

func TestCancelAnsweredYesAfterItEnded(t *testing.T) {
	c := newCLI(t)
	answer := c.pipeStdin()
	stdout, stderr, wait := interruptWhileSending(t, c)
	waitFor(t, stderr, "[y/N] ")
	// It ends while the question waits: the DELETE is refused, and the
	// follow reports the end as it is.
	c.api.mu.Lock()
	for _, step := range c.api.script {
		step(c.api.anns["ann-1"])
	}
	c.api.script = nil
	c.api.mu.Unlock()
	if _, err := io.WriteString(answer, "yes\n"); err != nil {
		t.Fatal(err)
	}
	c.wantExit(wait, ExitOK, stderr)
	if !strings.Contains(stderr.String(), "HTTP 409") || !strings.Contains(stdout.String(), "state=done") {
		t.Errorf("want the 409 reported and the end followed:\nstdout:\n%s\nstderr:\n%s", stdout, stderr)
	}
}

func TestPreview(t *testing.T) {
	c := newCLI(t)
	c.api.preview = apiclient.Audience{Members: 1000, Online: 500, Recipients: 500,
		PerNode: map[string]int64{"node2": 200, "node10": 1, "node1": 299}}
	r := c.run("preview", "--channel", "42", "--file", c.file)
	r.want(t, ExitOK)
	wantLines(t, r.stdout, `members: +1000`, `online: +500`, `recipients: +500`)
	if !regexp.MustCompile(`(?s)node node1: +299\n.*node node10: +1\n.*node node2: +200\n`).MatchString(r.stdout) {
		t.Errorf("nodes not sorted by name:\n%s", r.stdout)
	}
	posts, _, _ := c.api.snapshot()
	if posts[0].body["dry_run"] != true {
		t.Errorf("body %v lacks dry_run: true", posts[0].body)
	}
	if posts[0].key != "" {
		t.Errorf("a preview carried an Idempotency-Key %q", posts[0].key)
	}
}

func TestPreviewStillComputing(t *testing.T) {
	c := newCLI(t)
	c.api.preview504 = true
	r := c.run("preview", "--users", "alice", "--file", c.file)
	r.want(t, ExitFailed, "id=ann-1")
	if !strings.Contains(r.stderr, "still computing") {
		t.Errorf("stderr:\n%s", r.stderr)
	}
}

func TestStatus(t *testing.T) {
	c := newCLI(t)
	c.api.script = sendScript()
	c.run("send", "--channel", "42", "--file", c.file, "--interval", "2ms").want(t, ExitOK)
	r := c.run("status", "ann-1")
	r.want(t, ExitOK)
	wantLines(t, r.stdout, `id: +ann-1`, `state: +done`, `kind: +channel`, `channel_id: +42`, `recipients: +500`,
		`node node1: +300`, `node node2: +200`, `progress: +500/500 \(100%\)`,
		`stanzas: +sent=500 confirmed=490 dead_lettered=10 invalid=0 persisted=0`, `done: +2026-12-01T10:00:01\.500Z`)
	if strings.Contains(r.stdout, "cancelled:") {
		t.Errorf("a stage not reached is shown:\n%s", r.stdout)
	}

	r = c.run("status", "ann-1", "--json")
	r.want(t, ExitOK, `"id":"ann-1"`, `"per_node":{"node1":300,"node2":200}`)

	c.run("status", "nope").want(t, ExitFailed)
}

func TestStatusFollow(t *testing.T) {
	c := newCLI(t)
	c.run("send", "--channel", "42", "--file", c.file, "--no-follow").want(t, ExitOK)
	c.api.script = sendScript()
	r := c.run("status", "--follow", "--interval", "2ms", "ann-1")
	r.want(t, ExitOK, "state=done recipients=500")
	if !strings.Contains(r.stderr, "100%") {
		t.Errorf("no bar at 100%%:\n%q", r.stderr)
	}
}

func TestCancel(t *testing.T) {
	c := newCLI(t)
	c.run("send", "--channel", "42", "--file", c.file, "--no-follow").want(t, ExitOK)
	c.run("cancel", "ann-1").want(t, ExitOK, "state=cancelled recipients=0 confirmed=0 dead_lettered=0 invalid=0 resent_batches=0 duration=2s")

	c.api.anns["ann-1"].State = apiclient.StateDone
	r := c.run("cancel", "ann-1")
	r.want(t, ExitFailed)
	if !strings.Contains(r.stderr, "announcement ann-1 is already done (field state)") {
		t.Errorf("stderr:\n%s", r.stderr)
	}
}

func TestList(t *testing.T) {
	c := newCLI(t)
	for _, ch := range []string{"1", "2", "3"} {
		c.run("send", "--channel", ch, "--file", c.file, "--no-follow").want(t, ExitOK)
	}
	c.api.anns["ann-2"].State = apiclient.StateDone
	r := c.run("list")
	r.want(t, ExitOK)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "ID ") {
		t.Fatalf("list:\n%s", r.stdout)
	}
	for i, id := range []string{"ann-3", "ann-2", "ann-1"} {
		if !strings.HasPrefix(lines[i+1], id+" ") {
			t.Errorf("row %d is %q, want %s first (newest first)", i, lines[i+1], id)
		}
	}
	if !strings.Contains(lines[3], "2026-12-01T10:00:00.000Z") {
		t.Errorf("row lacks the accepted time: %q", lines[3])
	}

	r = c.run("list", "--state", "done", "--limit", "5")
	r.want(t, ExitOK)
	if n := strings.Count(r.stdout, "\n"); n != 2 || !strings.Contains(r.stdout, "ann-2") {
		t.Errorf("--state done:\n%s", r.stdout)
	}
}

func TestAuth(t *testing.T) {
	c := newCLI(t)
	c.api.token = "s3cret"

	r := c.run("list")
	r.want(t, ExitFailed)
	if !strings.Contains(r.stderr, "HTTP 401") || !strings.Contains(r.stderr, "--token") || !strings.Contains(r.stderr, "ANNOUNCER_TOKEN") {
		t.Errorf("no 401 hint:\n%s", r.stderr)
	}

	c.run("list", "--token", "s3cret").want(t, ExitOK)
	c.env["ANNOUNCER_TOKEN"] = "s3cret"
	c.run("list").want(t, ExitOK)
	_, _, auths := c.api.snapshot()
	if got := auths[len(auths)-1]; got != "Bearer s3cret" {
		t.Errorf("Authorization %q, want the bearer token", got)
	}
	r = c.run("list", "--token", "wrong")
	r.want(t, ExitFailed)
	if strings.Contains(r.stderr+r.stdout, "s3cret") {
		t.Errorf("the token was printed")
	}
}

func TestUsageErrors(t *testing.T) {
	c := newCLI(t)
	for _, args := range [][]string{
		{"send", "--file", c.file},
		{"send", "--channel", "1", "--users", "a", "--file", c.file},
		{"send", "--channel", "1"},
		{"send", "--channel", "1", "--file", c.file, "--priority", "urgent"},
		{"send", "--channel", "", "--file", c.file},
		{"send", "--users", " , ", "--file", c.file},
		{"send", "--channel", "1", "--file", c.file, "--idempotency-key", ""},
		{"send", "--channel", "1", "--file", c.file, "--interval", "0s"},
		{"send", "--channel", "1", "--file", c.file, "--stall-after", "-1s"},
		{"status", "a", "--follow", "--stall-after", "-1s"},
		{"status"},
		{"status", "a", "b"},
		{"status", "a", "--follow", "--json"},
		{"list", "--limit", "0"},
		{"list", "--state", "sleeping"},
		{"list", "--bogus"},
		{"frobnicate"},
		{"--url", "ftp://x", "list"},
		{"--timeout", "0s", "list"},
	} {
		if r := c.run(args...); r.code != ExitUsage {
			t.Errorf("%q: exit %d, want %d\nstderr:\n%s", args, r.code, ExitUsage, r.stderr)
		}
	}
	posts, _, auths := c.api.snapshot()
	if len(posts)+len(auths) != 0 {
		t.Errorf("a usage error reached the server")
	}
}

func TestMissingFile(t *testing.T) {
	c := newCLI(t)
	empty := filepath.Join(t.TempDir(), "empty.xml")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{filepath.Join(t.TempDir(), "none.xml"), empty} {
		if r := c.run("send", "--channel", "1", "--file", f); r.code != ExitFailed {
			t.Errorf("--file %s: exit %d, want 1", f, r.code)
		}
	}
}

func TestServerTextCannotDriveTheTerminal(t *testing.T) {
	c := newCLI(t)
	c.run("send", "--channel", "42", "--file", c.file, "--no-follow").want(t, ExitOK)
	c.api.anns["ann-1"].Reason = "evil\x1b[2Jreason"
	r := c.run("status", "ann-1")
	if strings.Contains(r.stdout, "\x1b") || !strings.Contains(r.stdout, `evil\x1b[2Jreason`) {
		t.Errorf("escape not neutralised:\n%q", r.stdout)
	}
}

// Done is 100 % even when the counts fall short of it, or there was no one
// to send to.
func TestDoneFillsTheBar(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		recipients, confirmed int64
	}{
		{"counts short", 500, 480},
		{"empty audience", 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCLI(t)
			c.api.script = []func(*apiclient.Announcement){func(a *apiclient.Announcement) {
				a.State = apiclient.StateDone
				a.Audience.Recipients, a.Stanzas.Confirmed = tc.recipients, tc.confirmed
				a.Times.Resolved, a.Times.Done = a.Times.Accepted, a.Times.Accepted.Add(time.Second)
			}}
			r := c.run("send", "--all-online", "--file", c.file, "--interval", "2ms")
			r.want(t, ExitOK, "state=done recipients="+strconv.FormatInt(tc.recipients, 10))
			if !strings.Contains(r.stderr, "100%") {
				t.Errorf("the bar never reached 100%%:\n%q", r.stderr)
			}
		})
	}
}

// A preview counted for longer than --timeout is still waited for, and its
// one POST makes one dry run: the 504's id is what the operator gets.
func TestPreviewWaitsForTheServersAnswer(t *testing.T) {
	c := newCLI(t)
	c.api.preview504 = true
	c.api.previewDelay = 300 * time.Millisecond
	r := c.run("--timeout", "50ms", "preview", "--channel", "42", "--file", c.file)
	r.want(t, ExitFailed, "id=ann-1\n")
	if !strings.Contains(r.stderr, "preview ann-1 is still computing") {
		t.Errorf("stderr:\n%s", r.stderr)
	}
	if posts, _, _ := c.api.snapshot(); len(posts) != 1 || len(c.api.order) != 1 {
		t.Errorf("%d POSTs made %d dry runs, want 1", len(posts), len(c.api.order))
	}
}

func TestPreviewIsNotRepeatedOnceSent(t *testing.T) {
	c := newCLI(t)
	c.api.postFail = []string{"drop"}
	r := c.run("preview", "--channel", "42", "--file", c.file)
	r.want(t, ExitFailed)
	if posts, _, _ := c.api.snapshot(); len(posts) != 1 {
		t.Errorf("%d POSTs after a dropped connection, want 1", len(posts))
	}
	if !strings.Contains(r.stderr, "announcer list") {
		t.Errorf("no hint to look for it:\n%s", r.stderr)
	}

	// A 503 asks for the retry.
	c = newCLI(t)
	c.api.postFail = []string{"503"}
	c.run("preview", "--channel", "42", "--file", c.file).want(t, ExitOK, "recipients:")
	if posts, _, _ := c.api.snapshot(); len(posts) != 2 {
		t.Errorf("%d POSTs after a 503, want 2", len(posts))
	}
}

func TestPreviewThatDidNotEnd(t *testing.T) {
	for _, tc := range []struct {
		state  apiclient.State
		reason string
		code   int
	}{
		{apiclient.StateRejected, "channel_not_found", ExitFailed},
		{apiclient.StateRejected, "channel_not_accepted", ExitFailed},
		{apiclient.StateFailed, "", ExitFailed},
		{apiclient.StateCancelled, "cancelled by request", ExitCancelled},
	} {
		t.Run(string(tc.state)+" "+tc.reason, func(t *testing.T) {
			c := newCLI(t)
			c.api.preview = apiclient.Audience{Members: 7} // what a rejected one must not show
			c.api.previewAs = func(a *apiclient.Announcement) {
				a.State, a.Reason = tc.state, tc.reason
				a.Audience = apiclient.Audience{}
			}
			r := c.run("preview", "--channel", "typo", "--file", c.file)
			r.want(t, tc.code)
			want := "preview ann-1 ended " + string(tc.state)
			if tc.reason != "" {
				want += " (reason " + value(tc.reason) + ")"
			}
			if !strings.Contains(r.stderr, want) {
				t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
			}
			if strings.Contains(r.stdout, "recipients") || strings.Contains(r.stdout, "online") {
				t.Errorf("an audience shown for a preview that counted none:\n%s", r.stdout)
			}
		})
	}
}

// An announcement whose figures stop moving (its progress updates lost) is
// not followed forever.
func TestFollowStopsWhenStalled(t *testing.T) {
	c := newCLI(t)
	c.api.script = sendScript()
	c.api.hold = 2 // sending, 100 of 500 confirmed, from then on
	start := time.Now()
	r := c.run("send", "--channel", "42", "--file", c.file, "--interval", "2ms", "--stall-after", "100ms")
	r.want(t, ExitStalled, "id=ann-1\n", "state=sending recipients=500 confirmed=100 ")
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("gave up after %v, before --stall-after", d)
	}
	for _, s := range []string{"announcement ann-1 has made no progress for 100ms", "(still sending, 100 of 500 recipients settled)", "not cancelled"} {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("stderr lacks %q:\n%s", s, r.stderr)
		}
	}
	c.wantDeletes(0)

	c.run("status", "ann-1", "--follow", "--interval", "2ms", "--stall-after", "20ms").want(t, ExitStalled, "state=sending")
}

func TestStallWatch(t *testing.T) {
	a := &apiclient.Announcement{ID: "x", State: apiclient.StateSending}
	w := stallWatch{after: time.Minute}
	steps := []struct {
		at     time.Duration
		change func()
		want   bool
	}{
		{0, nil, false},
		{59 * time.Second, nil, false},
		{61 * time.Second, func() { a.Stanzas.Confirmed++ }, false},
		{2 * time.Minute, nil, false},
		{2*time.Minute + 1*time.Second, nil, true},
		{3 * time.Minute, func() { a.Batches.Resent++ }, false},
		{5 * time.Minute, func() { a.Shards.Done++ }, false},
		{7 * time.Minute, func() { a.State = apiclient.StateResolving }, false},
		{8 * time.Minute, nil, true},
	}
	for _, s := range steps {
		if s.change != nil {
			s.change()
		}
		if got := w.stalled(a, t0.Add(s.at)); got != s.want {
			t.Errorf("at %v: stalled %v, want %v", s.at, got, s.want)
		}
	}
	off := stallWatch{}
	off.stalled(a, t0)
	if off.stalled(a, t0.Add(24*time.Hour)) {
		t.Error("--stall-after 0 gave up")
	}
}
