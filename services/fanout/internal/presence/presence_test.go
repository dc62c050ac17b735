package presence

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/services/fanout/internal/audience"
	"github.com/announcer/announcer/services/fanout/internal/audience/audiencetest"
)

// redisFixture seeds presence the way the presence tracker does.
type redisFixture struct{ *Redis }

func (f redisFixture) SetOnline(ctx context.Context, address string, usernames ...string) error {
	c, err := f.Client(ctx)
	if err != nil {
		return err
	}
	pipe := c.Pipeline()
	for _, u := range usernames {
		pipe.Set(ctx, u, address, 0)
		pipe.SAdd(ctx, address, u)
	}
	_, err = pipe.Exec(ctx)
	return err
}

func (f redisFixture) SetOffline(ctx context.Context, usernames ...string) error {
	c, err := f.Client(ctx)
	if err != nil {
		return err
	}
	for _, u := range usernames {
		addr, err := c.Get(ctx, u).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return err
		}
		if err := c.SRem(ctx, addr, u).Err(); err != nil {
			return err
		}
		if err := c.Del(ctx, u).Err(); err != nil {
			return err
		}
	}
	return nil
}

// The same contract the in-memory fake passes, against the stack's Redis.
// Keys carry a unique prefix: db 0 is shared with the demo data and other tests.
func TestRedisContract(t *testing.T) {
	env := stacktest.Get(t)
	r, err := NewRedis(config.UserActivityRedis{ClusterNodes: env.RedisAddr, ReadTimeout: 1000}, RedisOptions{Chunk: 1000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() }) // after the contract's own cleanup of its keys
	audiencetest.PresenceContract(t, redisFixture{r}, audiencetest.PresenceCaps{NamesServer: true, CanScan: true}, stacktest.Name("pt")+":")
}

// Redis Cluster refuses an MGET across hash slots (CROSSSLOT) even on one node,
// so a single-node cluster proves the cluster client's lookups are slot-safe.
func TestRedisClusterContract(t *testing.T) {
	stacktest.Get(t) // integration test: runs with the stack
	addr := stacktest.RedisCluster(t)
	r, err := NewRedis(config.UserActivityRedis{ClusterNodes: addr, Cluster: true, ReadTimeout: 1000}, RedisOptions{Chunk: 700})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	if cluster, err := r.Cluster(context.Background()); err != nil || !cluster {
		t.Fatalf("cluster = true did not select the cluster client (%v)", err)
	}
	// A plain client shows the server really is a cluster: cross-slot MGET fails.
	plain := redis.NewClient(&redis.Options{Addr: addr})
	defer plain.Close()
	if err := plain.MGet(context.Background(), "a", "b", "c").Err(); err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
		t.Fatalf("server is not enforcing cluster slots: %v", err)
	}
	audiencetest.PresenceContract(t, redisFixture{r}, audiencetest.PresenceCaps{NamesServer: true, CanScan: true}, "")
}

// A username that names a key of another kind (here a set, as a node's
// presence set is) is offline, on a single server and on a cluster alike;
// the users beside it are looked up.
func TestUsernameOfAnotherKeyKindIsOffline(t *testing.T) {
	env := stacktest.Get(t)
	for name, c := range map[string]config.UserActivityRedis{
		"single":  {ClusterNodes: env.RedisAddr, ReadTimeout: 1000},
		"cluster": {ClusterNodes: stacktest.RedisCluster(t), Cluster: true, ReadTimeout: 1000},
	} {
		t.Run(name, func(t *testing.T) {
			r, err := NewRedis(c, RedisOptions{Chunk: 10})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = r.Close() })
			ctx := context.Background()
			cl, err := r.Client(ctx)
			if err != nil {
				t.Fatal(err)
			}
			set, user := stacktest.Name("pt_set"), stacktest.Name("pt_user")
			t.Cleanup(func() { cl.Del(ctx, set); cl.Del(ctx, user) })
			if err := cl.SAdd(ctx, set, "x").Err(); err != nil {
				t.Fatal(err)
			}
			if err := cl.Set(ctx, user, "node1", 0).Err(); err != nil {
				t.Fatal(err)
			}
			where := make([]string, 2)
			if err := r.Lookup(ctx, []string{set, user}, where); err != nil || where[0] != "" || where[1] != "node1" {
				t.Fatalf("lookup %q, %v; want the set's name offline and the user on node1", where, err)
			}
		})
	}
}

// One seed, no cluster key: the server says it is a cluster member, and the
// cluster client is used (a plain client's MGET would fail with CROSSSLOT).
func TestRedisClusterFoundFromOneSeed(t *testing.T) {
	env := stacktest.Get(t)
	addr := stacktest.RedisCluster(t)
	r, err := NewRedis(config.UserActivityRedis{ClusterNodes: addr, ReadTimeout: 1000}, RedisOptions{Chunk: 700})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	if cluster, err := r.Cluster(context.Background()); err != nil || !cluster {
		t.Fatalf("cluster %v, err %v: a cluster member behind one seed was not recognised", cluster, err)
	}
	audiencetest.PresenceContract(t, redisFixture{r}, audiencetest.PresenceCaps{NamesServer: true, CanScan: true}, "")

	plain, err := NewRedis(config.UserActivityRedis{ClusterNodes: env.RedisAddr, ReadTimeout: 1000}, RedisOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = plain.Close() })
	if cluster, err := plain.Cluster(context.Background()); err != nil || cluster {
		t.Fatalf("the stack's standalone Redis taken for a cluster (%v, %v)", cluster, err)
	}
}

// A Redis that does not answer is an error, never "everybody is offline".
func TestRedisDownIsAnError(t *testing.T) {
	r, err := NewRedis(config.UserActivityRedis{ClusterNodes: testkit.FreeAddr(t), ReadTimeout: 100}, RedisOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	where := []string{"x"}
	if err := r.Lookup(ctx, []string{"alice"}, where); err == nil {
		t.Fatal("lookup against a dead server succeeded")
	}
	if _, _, err := r.Scan(ctx, "127.0.0.1", 0, 10); err == nil {
		t.Fatal("scan against a dead server succeeded")
	}
}

// activityAPI is a user-activity REST API over the in-memory presence model.
type activityAPI struct {
	*audiencetest.Presence
	fails   atomic.Int32 // answer 503 this many times
	delay   time.Duration
	calls   atomic.Int32
	maxSeen atomic.Int32
}

func (a *activityAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.calls.Add(1)
	if r.Method != http.MethodPost || r.URL.Path != OnlinePath {
		http.NotFound(w, r)
		return
	}
	if a.fails.Add(-1) >= 0 {
		http.Error(w, "busy", http.StatusServiceUnavailable)
		return
	}
	if a.delay > 0 {
		select {
		case <-time.After(a.delay):
		case <-r.Context().Done():
			return
		}
	}
	var names []string
	if err := json.NewDecoder(r.Body).Decode(&names); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if n := int32(len(names)); n > a.maxSeen.Load() {
		a.maxSeen.Store(n)
	}
	where := make([]string, len(names))
	if err := a.Lookup(r.Context(), names, where); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	online := []string{}
	for i, n := range names {
		if where[i] != "" {
			online = append(online, n)
		}
	}
	_ = json.NewEncoder(w).Encode(online)
}

type restFixture struct {
	*REST
	api *activityAPI
}

func (f restFixture) SetOnline(ctx context.Context, address string, usernames ...string) error {
	return f.api.SetOnline(ctx, address, usernames...)
}

func (f restFixture) SetOffline(ctx context.Context, usernames ...string) error {
	return f.api.SetOffline(ctx, usernames...)
}

func newREST(t *testing.T, cfg config.UserActivityREST, chunk int) (*REST, *activityAPI) {
	api := &activityAPI{Presence: audiencetest.NewPresence()}
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	cfg.Address = strings.TrimPrefix(srv.URL, "http://") // the first generation's form: host:port
	r := NewREST(cfg, chunk)
	t.Cleanup(func() { _ = r.Close() })
	return r, api
}

func TestRESTContract(t *testing.T) {
	r, api := newREST(t, config.UserActivityREST{RequestTimeout: 2000, MaxRetry: 1, MaxIdleConn: 2, IdleConnTimeout: 1}, 1000)
	audiencetest.PresenceContract(t, restFixture{r, api}, audiencetest.PresenceCaps{}, "")
	if got := api.maxSeen.Load(); got > 1000 {
		t.Fatalf("request of %d usernames, chunk is 1000", got)
	}
}

func TestRESTRetriesThenFails(t *testing.T) {
	ctx := context.Background()
	r, api := newREST(t, config.UserActivityREST{RequestTimeout: 2000, MaxRetry: 2}, 10)
	_ = api.SetOnline(ctx, "x", "bob")
	api.fails.Store(2) // max_retry = 2: three tries, the third succeeds
	where := make([]string, 2)
	if err := r.Lookup(ctx, []string{"alice", "bob"}, where); err != nil {
		t.Fatal(err)
	}
	if where[0] != "" || where[1] != audience.NoAddress || api.calls.Load() != 3 {
		t.Fatalf("where %q after %d calls", where, api.calls.Load())
	}
	api.calls.Store(0)
	api.fails.Store(3)
	if err := r.Lookup(ctx, []string{"bob"}, where[:1]); err == nil {
		t.Fatal("an API that keeps failing must be an error, not offline")
	}
	if api.calls.Load() != 3 {
		t.Fatalf("%d calls, want 1 + max_retry 2", api.calls.Load())
	}
}

func TestRESTTimeout(t *testing.T) {
	r, api := newREST(t, config.UserActivityREST{RequestTimeout: 30, MaxRetry: 0}, 10)
	api.delay = 500 * time.Millisecond
	start := time.Now()
	err := r.Lookup(context.Background(), []string{"bob"}, make([]string, 1))
	if err == nil {
		t.Fatal("slow API: no error")
	}
	if time.Since(start) >= 400*time.Millisecond {
		t.Fatalf("request_timeout 30ms not applied (took %s)", time.Since(start))
	}
}

func TestDecodeOnline(t *testing.T) {
	for in, want := range map[string]string{
		`["a","b"]`: "a,b", `[]`: "", `null`: "", ` ["x"] `: "x",
	} {
		got, err := decodeOnline(strings.NewReader(in))
		if err != nil || strings.Join(got, ",") != want {
			t.Errorf("%s: %v %v", in, got, err)
		}
	}
	for _, bad := range []string{``, `{}`, `"a"`, `[1]`, `["a"] ["b"]`, `["a"`} {
		if _, err := decodeOnline(strings.NewReader(bad)); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

// The REST API's answer is a trust boundary.
func FuzzDecodeOnline(f *testing.F) {
	for _, s := range []string{`["a","b"]`, `[]`, `null`, `{}`, `["a"`, `[1,"x"]`, "[\"\\u0000\"]"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		online, err := decodeOnline(strings.NewReader(string(b)))
		if err != nil && online != nil {
			t.Fatalf("error with a result: %v", online)
		}
		if err == nil {
			// Whatever was accepted re-encodes to an equivalent array.
			again, err := json.Marshal(online)
			if err != nil {
				t.Fatal(err)
			}
			back, err := decodeOnline(strings.NewReader(string(again)))
			if err != nil || len(back) != len(online) {
				t.Fatalf("round trip %q: %v %v", again, back, err)
			}
		}
	})
}

// startRedisCluster runs a private single-node Redis Cluster owning every slot.
