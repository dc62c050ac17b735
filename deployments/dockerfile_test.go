package deployments

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// builtBinary is one `go build -o /out/<name> <package>` of the build stage.
type builtBinary struct {
	name, pkg, dir string // dir: where the go command runs (after a `cd`)
	gowork         string // the GOWORK setting of that command, if any
}

type dockerfile struct {
	stages []instructions.Stage
	built  []builtBinary
	// shipped are the files the runtime stage copies into binDir, by base name.
	shipped map[string]bool
}

var goBuildRe = regexp.MustCompile(`^(?:GOWORK=(\S+) )?go build .*-o (/out/\S+) (\./\S+)$`)

// parseDockerfile parses with BuildKit's own parser and instruction reader (what `docker build`
// runs), with its linter: a syntax error or a lint warning fails the test.
func parseDockerfile(t *testing.T) dockerfile {
	t.Helper()
	res, err := parser.Parse(bytes.NewReader(readFile(t, dockerfilePath)))
	if err != nil {
		t.Fatalf("%s: %v", dockerfilePath, err)
	}
	for _, w := range res.Warnings {
		t.Errorf("%s: parser warning: %s", dockerfilePath, w.Short)
	}
	var lint []string
	stages, metaArgs, err := instructions.Parse(res.AST, linter.New(&linter.Config{
		ExperimentalAll: true,
		Warn: func(rule, _, _, msg string, loc []parser.Range) {
			line := 0
			if len(loc) > 0 {
				line = loc[0].Start.Line
			}
			lint = append(lint, fmt.Sprintf("line %d: %s: %s", line, rule, msg))
		},
	}))
	if err != nil {
		t.Fatalf("%s: %v", dockerfilePath, err)
	}
	for _, l := range lint {
		t.Errorf("%s: lint %s", dockerfilePath, l)
	}
	if len(metaArgs) != 0 {
		t.Errorf("ARG before FROM: the tests read image names literally")
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages: want a build stage and a runtime stage", len(stages))
	}
	d := dockerfile{stages: stages, shipped: map[string]bool{}}
	build := stages[0]
	// Each RUN is split at && so that a `cd dir` applies to the go build after it.
	for _, c := range build.Commands {
		run, ok := c.(*instructions.RunCommand)
		if !ok {
			continue
		}
		dir := ""
		for _, step := range strings.Split(strings.Join(run.CmdLine, " "), "&&") {
			step = strings.Join(strings.Fields(step), " ")
			if strings.HasPrefix(step, "cd ") {
				dir = strings.TrimPrefix(step, "cd ")
				continue
			}
			if m := goBuildRe.FindStringSubmatch(step); m != nil {
				d.built = append(d.built, builtBinary{name: path.Base(m[2]), pkg: m[3], dir: dir, gowork: m[1]})
			}
		}
	}
	runtime := stages[len(stages)-1]
	for _, c := range runtime.Commands {
		cp, ok := c.(*instructions.CopyCommand)
		if !ok || cp.From != build.Name {
			continue
		}
		if cp.DestPath != binDir {
			t.Errorf("runtime stage copies %q to %q, want %s", cp.SourcePaths, cp.DestPath, binDir)
			continue
		}
		for _, src := range cp.SourcePaths {
			d.shipped[path.Base(src)] = true
		}
	}
	return d
}

func (d dockerfile) env(stage int, key string) string {
	v := ""
	for _, c := range d.stages[stage].Commands {
		if e, ok := c.(*instructions.EnvCommand); ok {
			for _, kv := range e.Env {
				if kv.Key == key {
					v = kv.Value
				}
			}
		}
	}
	return v
}

func TestDockerfileStages(t *testing.T) {
	d := parseDockerfile(t)
	build, runtime := d.stages[0], d.stages[len(d.stages)-1]
	if !strings.HasPrefix(build.BaseName, "golang:1.26") {
		t.Errorf("build stage FROM %q, want golang:1.26 (go.work says go 1.26.x)", build.BaseName)
	}
	if !strings.HasPrefix(runtime.BaseName, "gcr.io/distroless/static") && !regexp.MustCompile(`^debian:[a-z0-9.-]*slim$`).MatchString(runtime.BaseName) {
		t.Errorf("runtime stage FROM %q, want distroless/static or debian-slim", runtime.BaseName)
	}
	// distroless/static has no libc: the binaries must be static.
	if strings.Contains(runtime.BaseName, "distroless/static") && d.env(0, "CGO_ENABLED") != "0" {
		t.Errorf("build stage CGO_ENABLED=%q: want 0 for a static binary on distroless/static", d.env(0, "CGO_ENABLED"))
	}
	var user string
	for _, c := range runtime.Commands {
		if u, ok := c.(*instructions.UserCommand); ok {
			user = u.User
		}
	}
	name, _, _ := strings.Cut(user, ":")
	if name == "" || name == "root" || name == "0" {
		t.Errorf("runtime stage runs as %q: want a non-root USER", user)
	}
}

// The four services are built from their packages in the go.work workspace, the probe from
// this module, and all of them shipped in the runtime image; compose runs only what is shipped.
func TestDockerfileBuildsWhatComposeRuns(t *testing.T) {
	d := parseDockerfile(t)
	built := map[string]builtBinary{}
	for _, b := range d.built {
		built[b.name] = b
	}
	uses := goWorkUses(t)
	for _, r := range roles {
		b, ok := built[binaryOf(r)]
		if !ok {
			t.Errorf("%s is not built (go build -o /out/%s ...)", binaryOf(r), binaryOf(r))
			continue
		}
		if b.dir != "" || b.gowork != "" {
			t.Errorf("%s: built in %q with GOWORK=%q; build the services from the repository root's go.work", b.name, b.dir, b.gowork)
		}
		if !contains(uses, filepath.Clean(b.pkg)) {
			t.Errorf("%s: package %s is not a go.work module %q", b.name, b.pkg, uses)
		}
	}
	if _, ok := built["announcer-probe"]; !ok {
		t.Error("announcer-probe (the healthcheck) is not built")
	}
	for name := range built {
		if !d.shipped[name] {
			t.Errorf("%s is built but not copied to %s of the runtime image", name, binDir)
		}
	}
	for name := range d.shipped {
		if _, ok := built[name]; !ok {
			t.Errorf("runtime image copies %s, which the build stage does not build", name)
		}
	}
	f := loadCompose(t)
	for svcName, svc := range f.Services {
		if svc.Image != "announcer:local" {
			continue
		}
		run := [][]string{svc.Command}
		if svc.Healthcheck != nil && len(svc.Healthcheck.Test) > 1 && svc.Healthcheck.Test[0] == "CMD" {
			run = append(run, svc.Healthcheck.Test[1:])
		}
		for _, argv := range run {
			if len(argv) == 0 || !strings.HasPrefix(argv[0], binDir) || !d.shipped[path.Base(argv[0])] {
				t.Errorf("service %s runs %q, which the image does not have in %s", svcName, argv, binDir)
			}
		}
	}
}

// Each `go build` of the Dockerfile names a main package that resolves the way the build runs
// it (workspace or GOWORK=off): `go list` answers in a second where a compile would take minutes.
func TestDockerfileBuildPackagesResolve(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range parseDockerfile(t).built {
		t.Run(b.name, func(t *testing.T) {
			cmd := exec.Command(goBin, "list", "-find", "-f", "{{.Name}}", b.pkg)
			cmd.Dir = filepath.Join(root, b.dir)
			gowork := filepath.Join(root, "go.work")
			if b.gowork != "" {
				gowork = b.gowork
			}
			cmd.Env = append(os.Environ(), "GOWORK="+gowork, "CGO_ENABLED=0")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("go list %s in %s (GOWORK=%s): %v\n%s", b.pkg, cmd.Dir, gowork, err, out)
			}
			if name := strings.TrimSpace(string(out)); name != "main" {
				t.Errorf("%s is package %q, not main", b.pkg, name)
			}
		})
	}
}

// The build context is the repository root, which holds the local stack's state: the
// Dockerfile-specific ignore file keeps it (and .git, bin) out of every build.
func TestDockerignore(t *testing.T) {
	ignore := strings.Fields(string(readFile(t, dockerfilePath+".dockerignore")))
	for _, want := range []string{".git", ".stack", "bin"} {
		if !contains(ignore, want) {
			t.Errorf("%s.dockerignore does not exclude %s", dockerfilePath, want)
		}
	}
}
