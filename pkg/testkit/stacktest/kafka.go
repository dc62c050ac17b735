package stacktest

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/announcer/announcer/pkg/testkit"
)

// Kafka is a private single-node broker a test may kill and restart, on
// ports and a data directory of its own, from the stack's jars: the stack's
// shared broker stays up for every other test.
type Kafka struct {
	t      testing.TB
	env    []string
	script string
	addr   string
	ports  []string // every port the broker listens on (clients, controller)
}

// PrivateKafka starts a broker for this test alone; it is stopped when the test ends.
func PrivateKafka(t testing.TB, e Env) *Kafka {
	t.Helper()
	return privateKafka(t, e, nil, nil)
}

// SecureListener is a private broker's SASL_SSL listener.
type SecureListener struct {
	Addr   string // host:port
	CAFile string // PEM: the CA that signed the broker's certificate (for 127.0.0.1 and localhost)
	// User and Password are the listener's PLAIN user. It knows no SCRAM user until one is
	// added with the admin API (AlterUserScramCredentials) on the PLAINTEXT port.
	User, Password string
}

// PrivateKafkaSecure is PrivateKafka with a SASL_SSL listener besides the PLAINTEXT one,
// offering PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 over TLS with a certificate of a CA made
// for this test.
func PrivateKafkaSecure(t testing.TB, e Env) (*Kafka, SecureListener) {
	t.Helper()
	dir := t.TempDir()
	ca, keystore := testkit.WriteTLSFiles(t, dir, "127.0.0.1", "localhost")
	l := SecureListener{CAFile: ca, User: "announcer", Password: "announcer-" + Name("pw")}
	port := freePort(t)
	l.Addr = "127.0.0.1:" + port
	k := privateKafka(t, e, []string{port}, []string{"KAFKA_SASL_SSL_PORT=" + port, "KAFKA_TLS_KEYSTORE=" + keystore,
		"KAFKA_SASL_PLAIN_USER=" + l.User, "KAFKA_SASL_PLAIN_PASSWORD=" + l.Password})
	return k, l
}

func privateKafka(t testing.TB, e Env, ports, env []string) *Kafka {
	t.Helper()
	if e.StackScript == "" || e.KafkaLibsDir == "" {
		t.Fatal("a private broker needs ANNOUNCER_STACK_SCRIPT and ANNOUNCER_KAFKA_LIBS_DIR (stack.sh env)")
	}
	port, cport := freePort(t), freePort(t)
	k := &Kafka{
		t: t, script: e.StackScript, addr: "127.0.0.1:" + port, ports: append([]string{port, cport}, ports...),
		env: append(append(os.Environ(), "STACK_DIR="+t.TempDir(), "KAFKA_PORT="+port, "KAFKA_CONTROLLER_PORT="+cport,
			"KAFKA_LIBS_DIR="+e.KafkaLibsDir, "STACK_STOP_TIMEOUT=10"), env...),
	}
	t.Cleanup(func() { k.stack("kafka-down") })
	k.Start()
	return k
}

// Brokers are the broker's bootstrap addresses.
func (k *Kafka) Brokers() []string { return []string{k.addr} }

// Start starts the broker (again) and returns once it is ready; its data survives restarts.
func (k *Kafka) Start() {
	k.t.Helper()
	if out, err := k.stack("kafka-up"); err != nil {
		k.t.Fatalf("kafka-up: %v\n%s", err, out)
	}
}

// pid is the broker's process id.
func (k *Kafka) pid() int {
	k.t.Helper()
	c := exec.Command("bash", k.script, "kafka-pid")
	c.Env = k.env
	b, err := c.Output()
	out := string(b)
	pid, perr := strconv.Atoi(strings.TrimSpace(out))
	if err != nil || perr != nil {
		k.t.Fatalf("kafka-pid: %v %v: %q", err, perr, out)
	}
	return pid
}

// Pause freezes the broker (SIGSTOP): connections stay open and nothing is
// answered, as with a broker stuck in a long GC pause. Resume thaws it.
func (k *Kafka) Pause() {
	k.t.Helper()
	pid := k.pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		k.t.Fatalf("kill -STOP %d: %v", pid, err)
	}
	// A test that fails while the broker is frozen must not leave it so.
	k.t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
}

// Resume thaws a paused broker.
func (k *Kafka) Resume() {
	k.t.Helper()
	pid := k.pid()
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		k.t.Fatalf("kill -CONT %d: %v", pid, err)
	}
}

// Kill ends the broker with SIGKILL, as a crash would, and waits until it is
// gone and its ports are closed, so that Start may follow at once.
func (k *Kafka) Kill() {
	k.t.Helper()
	pid := k.pid()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		k.t.Fatalf("kill -9 %d: %v", pid, err)
	}
	for syscall.Kill(pid, 0) == nil {
		if b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); strings.Contains(string(b), ") Z ") {
			break // a zombie until the script's parent reaps it: dead all the same
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The JVM's main thread turns zombie before its other threads have
	// exited, and its sockets close only with the last of them.
	for _, port := range k.ports {
		testkit.Eventually(k.t, 30*time.Second, "port "+port+" of the killed broker to close", func() bool {
			c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, 200*time.Millisecond)
			if err != nil {
				return true
			}
			_ = c.Close()
			return false
		})
	}
}

func (k *Kafka) stack(cmd string) (string, error) {
	c := exec.Command("bash", k.script, cmd)
	c.Env = k.env
	b, err := c.CombinedOutput()
	return string(b), err
}

func freePort(t testing.TB) string {
	_, port, _ := net.SplitHostPort(testkit.FreeAddr(t))
	return port
}
