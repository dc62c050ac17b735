package redisconn

import (
	"context"
	"testing"
	"time"

	"github.com/announcer/announcer/pkg/testkit"
)

// Several seeds or cluster = true decide "cluster" without asking; a single
// seed is left to ask; db != 0 cannot be a cluster.
func TestClusterSelection(t *testing.T) {
	for _, tc := range []struct {
		addrs   []string
		cluster bool
		db      int
		known   bool
		want    bool
		wantErr bool
	}{
		{[]string{"127.0.0.1:6379"}, false, 0, false, false, false},
		{[]string{"127.0.0.1:6379"}, true, 0, true, true, false},
		{[]string{"127.0.0.1:7000", "127.0.0.1:7001"}, false, 0, true, true, false},
		{[]string{"127.0.0.1:7000", "127.0.0.1:7001"}, false, 3, false, false, true},
		{nil, false, 0, false, false, true},
	} {
		c, err := New("test", Options{Addrs: tc.addrs, Cluster: tc.cluster, DB: tc.db})
		if (err != nil) != tc.wantErr {
			t.Errorf("%+v: err %v", tc, err)
			continue
		}
		if err == nil && (c.known != tc.known || c.cluster != tc.want) {
			t.Errorf("%+v: known %v, cluster %v", tc, c.known, c.cluster)
		}
	}
}

// A seed that does not answer is an error (the caller retries), never a guess.
func TestSilentSeedIsAnError(t *testing.T) {
	c, err := New("test", Options{Addrs: []string{testkit.FreeAddr(t)}, Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Cluster(ctx); err == nil {
		t.Fatal("a dead seed was classified")
	}
	if err := c.Ping(ctx); err == nil {
		t.Fatal("ping of a dead server succeeded")
	}
}

// max_retries = 0 means no retry; go-redis would read a 0 as 3 retries.
func TestMaxRetriesZeroIsNone(t *testing.T) {
	for give, want := range map[int]int{0: -1, -1: -1, 2: 2} {
		c, err := New("test", Options{Addrs: []string{"127.0.0.1:1"}, MaxRetries: give})
		if err != nil {
			t.Fatal(err)
		}
		if c.opts.MaxRetries != want {
			t.Errorf("max_retries %d: go-redis MaxRetries %d, want %d", give, c.opts.MaxRetries, want)
		}
	}
}
