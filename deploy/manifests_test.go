package deploy

// The deployment files checked offline: every Kubernetes manifest decoded
// strictly into the Kubernetes API's own Go types (an unknown or misspelt
// field, a wrong type or an unknown kind fails), then checked against each
// other and against capsgate itself (the ConfigMap's capsgate.yaml starts a
// real node); the Dockerfile's build makes static binaries; the systemd
// unit passes systemd-analyze verify.

import (
	"bytes"
	"debug/elf"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/capsgate/capsgate/cluster/farm"
)

// k8sDir holds the manifests and their kustomization.
const k8sDir = "kubernetes"

// manifest is one decoded Kubernetes object and where it came from.
type manifest struct {
	file string
	kind string
	obj  any
}

// kinds are the Kubernetes kinds the manifests may use, by apiVersion/kind.
var kinds = map[string]func() any{
	"v1/Namespace":                       func() any { return &corev1.Namespace{} },
	"v1/ConfigMap":                       func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                          func() any { return &corev1.Secret{} },
	"v1/Service":                         func() any { return &corev1.Service{} },
	"apps/v1/StatefulSet":                func() any { return &appsv1.StatefulSet{} },
	"policy/v1/PodDisruptionBudget":      func() any { return &policyv1.PodDisruptionBudget{} },
	"networking.k8s.io/v1/NetworkPolicy": func() any { return &networkingv1.NetworkPolicy{} },
}

// kustomization is the part of a kustomize.config.k8s.io/v1beta1
// Kustomization these files use (kustomize's types are not in k8s.io/api).
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
	} `json:"images"`
}

// loadManifests decodes every document of every file the kustomization
// lists, strictly.
func loadManifests(t *testing.T) (kustomization, []manifest) {
	t.Helper()
	var k kustomization
	data, err := os.ReadFile(filepath.Join(k8sDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := decodeStrict(data, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Fatalf("kustomization.yaml: %s %s", k.APIVersion, k.Kind)
	}
	files, err := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, f := range files {
		if filepath.Base(f) != "kustomization.yaml" {
			listed = append(listed, filepath.Base(f))
		}
	}
	if !slices.Equal(slices.Sorted(slices.Values(k.Resources)), listed) {
		t.Errorf("kustomization.yaml lists %v; the directory has %v", k.Resources, listed)
	}
	var out []manifest
	for _, f := range k.Resources {
		data, err := os.ReadFile(filepath.Join(k8sDir, f))
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Fatalf("%s document %d: %v", f, i+1, err)
			}
			newObj, ok := kinds[tm.APIVersion+"/"+tm.Kind]
			if !ok {
				t.Fatalf("%s document %d: unknown kind %s %s", f, i+1, tm.APIVersion, tm.Kind)
			}
			obj := newObj()
			if err := decodeStrict([]byte(doc), obj); err != nil {
				t.Errorf("%s document %d (%s): %v", f, i+1, tm.Kind, err)
				continue
			}
			out = append(out, manifest{file: f, kind: tm.Kind, obj: obj})
		}
	}
	return k, out
}

// decodeStrict decodes a YAML document into v the way the Kubernetes API
// server decodes a request: field names matched case-sensitively, and an
// unknown or duplicate field, or a value of the wrong type, is an error.
// (sigs.k8s.io/yaml's UnmarshalStrict alone would take readOnlyRootFileSystem
// for readOnlyRootFilesystem: encoding/json matches names regardless of case.)
func decodeStrict(doc []byte, v any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(j, v)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// find returns the manifests of one Go type.
func find[T any](ms []manifest) []T {
	var out []T
	for _, m := range ms {
		if v, ok := m.obj.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

func TestKubernetesManifests(t *testing.T) {
	k, ms := loadManifests(t)
	count := map[string]int{}
	for _, m := range ms {
		count[m.kind]++
	}
	t.Logf("decoded strictly into k8s.io/api types: %v", count)
	sts := find[*appsv1.StatefulSet](ms)
	cms := find[*corev1.ConfigMap](ms)
	secrets := find[*corev1.Secret](ms)
	services := find[*corev1.Service](ms)
	pdbs := find[*policyv1.PodDisruptionBudget](ms)
	if len(sts) != 1 || len(cms) != 1 || len(pdbs) != 1 || len(secrets) < 1 || len(services) < 2 {
		t.Fatalf("want a StatefulSet, a ConfigMap, a PodDisruptionBudget, Secrets and two Services: %v", count)
	}
	ss, cm := sts[0], cms[0]

	for _, m := range ms {
		meta := objectMeta(m.obj)
		if meta.Namespace != k.Namespace && m.kind != "Namespace" {
			t.Errorf("%s %s: namespace %q, the kustomization's is %q", m.kind, meta.Name, meta.Namespace, k.Namespace)
		}
	}

	// The StatefulSet: selectors, headless Service, probes, security.
	pod := ss.Spec.Template
	labels := pod.Labels
	if !matches(ss.Spec.Selector.MatchLabels, labels) {
		t.Errorf("StatefulSet selector %v does not select its pods %v", ss.Spec.Selector.MatchLabels, labels)
	}
	if ss.Spec.Replicas == nil || *ss.Spec.Replicas < 3 {
		t.Errorf("StatefulSet replicas %v: run three or more (a two-node farm that loses one runs on only one side)", ss.Spec.Replicas)
	}
	var headless *corev1.Service
	for _, s := range services {
		if !matches(s.Spec.Selector, labels) {
			t.Errorf("Service %s selects %v, not the capsgate pods", s.Name, s.Spec.Selector)
		}
		if s.Name == ss.Spec.ServiceName {
			headless = s
		}
	}
	if headless == nil || headless.Spec.ClusterIP != corev1.ClusterIPNone || !headless.Spec.PublishNotReadyAddresses {
		t.Errorf("StatefulSet serviceName %q: want a headless Service publishing not-ready pods (gossip discovery)", ss.Spec.ServiceName)
	}
	if !matches(pdbs[0].Spec.Selector.MatchLabels, labels) {
		t.Errorf("PodDisruptionBudget selects %v, not the capsgate pods", pdbs[0].Spec.Selector.MatchLabels)
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	for name, probe := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe} {
		if probe == nil || probe.HTTPGet == nil {
			t.Errorf("%s probe: want an HTTP probe", name)
			continue
		}
		if _, ok := ports[probe.HTTPGet.Port.StrVal]; !ok {
			t.Errorf("%s probe on port %v, which the container does not name", name, probe.HTTPGet.Port)
		}
	}
	if c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet != nil && c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("readiness probe %s, want /readyz (503 while draining)", c.ReadinessProbe.HTTPGet.Path)
	}
	if c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil && c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("liveness probe %s, want /healthz", c.LivenessProbe.HTTPGet.Path)
	}
	psc, csc := pod.Spec.SecurityContext, c.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("pod security context %+v: want runAsNonRoot and a non-zero user", psc)
	}
	if csc == nil || csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem ||
		csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation ||
		csc.Capabilities == nil || !slices.Contains(csc.Capabilities.Drop, "ALL") {
		t.Errorf("container security context %+v: want a read-only root, no privilege escalation, every capability dropped", csc)
	}
	for _, s := range services {
		for _, p := range s.Spec.Ports {
			if _, ok := ports[p.TargetPort.StrVal]; !ok {
				t.Errorf("Service %s port %s targets %v, which the container does not name", s.Name, p.Name, p.TargetPort)
			}
		}
	}

	// capsgate.yaml: its ports are the container's, its files are mounted
	// from the Secrets that hold them, its data dir is the volume claim.
	var cfg struct {
		DataDir string `json:"data_dir"`
		RESP    struct {
			Addr         string `json:"addr"`
			PasswordFile string `json:"password_file"`
		} `json:"resp"`
		Admin struct {
			Addr      string `json:"addr"`
			TokenFile string `json:"token_file"`
		} `json:"admin"`
		Gossip struct {
			Addr    string `json:"addr"`
			KeyFile string `json:"key_file"`
		} `json:"gossip"`
		Join       []string `json:"join"`
		VendorKeys []string `json:"vendor_keys"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["capsgate.yaml"]), &cfg); err != nil {
		t.Fatalf("ConfigMap %s capsgate.yaml: %v", cm.Name, err)
	}
	for name, addr := range map[string]string{"resp": cfg.RESP.Addr, "admin": cfg.Admin.Addr, "gossip-tcp": cfg.Gossip.Addr, "gossip-udp": cfg.Gossip.Addr} {
		if _, port, _ := strings.Cut(addr, ":"); port != strconv.Itoa(int(ports[name])) {
			t.Errorf("capsgate.yaml listens on %s for %s; the container port is %d", addr, name, ports[name])
		}
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		volumes[v.Name] = v
	}
	for _, vct := range ss.Spec.VolumeClaimTemplates {
		volumes[vct.Name] = corev1.Volume{Name: vct.Name}
	}
	for _, m := range c.VolumeMounts {
		if _, ok := volumes[m.Name]; !ok {
			t.Errorf("volume mount %s: no volume or claim %s", m.MountPath, m.Name)
		}
	}
	if m, ok := mounts[cfg.DataDir]; !ok || !slices.ContainsFunc(ss.Spec.VolumeClaimTemplates, func(v corev1.PersistentVolumeClaim) bool { return v.Name == m.Name }) {
		t.Errorf("data_dir %s is not a persistent volume claim's mount", cfg.DataDir)
	}
	secretKeys := map[string]map[string]bool{}
	for _, s := range secrets {
		secretKeys[s.Name] = map[string]bool{}
		for key := range s.StringData {
			secretKeys[s.Name][key] = true
		}
		for key := range s.Data {
			secretKeys[s.Name][key] = true
		}
	}
	files := append([]string{cfg.Admin.TokenFile, cfg.Gossip.KeyFile}, cfg.VendorKeys...)
	if cfg.RESP.PasswordFile != "" {
		files = append(files, cfg.RESP.PasswordFile)
	}
	for _, f := range files {
		m, ok := mounts[path.Dir(f)]
		if !ok {
			t.Errorf("capsgate.yaml reads %s: nothing is mounted at %s", f, path.Dir(f))
			continue
		}
		v := volumes[m.Name]
		if v.Secret == nil || !secretKeys[v.Secret.SecretName][path.Base(f)] {
			t.Errorf("capsgate.yaml reads %s: volume %s is not a Secret holding %s", f, m.Name, path.Base(f))
		}
	}
	if cfgMount, ok := mounts["/etc/capsgate/capsgate.yaml"]; !ok || volumes[cfgMount.Name].ConfigMap == nil ||
		volumes[cfgMount.Name].ConfigMap.Name != cm.Name {
		t.Errorf("capsgate.yaml is not mounted from ConfigMap %s", cm.Name)
	}
	for _, j := range cfg.Join {
		if host, _, _ := strings.Cut(j, "."); host != headless.Name {
			t.Errorf("join %s: want the headless Service %s", j, headless.Name)
		}
	}
	if !slices.Contains(c.Args, "--config=/etc/capsgate/capsgate.yaml") {
		t.Errorf("container args %v: want --config=/etc/capsgate/capsgate.yaml", c.Args)
	}

	// The image the kustomization pins is the container's.
	for _, img := range k.Images {
		if !strings.HasPrefix(c.Image, img.Name+":") {
			t.Errorf("kustomization image %s: the container runs %s", img.Name, c.Image)
		}
	}
}

func objectMeta(obj any) metav1.ObjectMeta {
	switch o := obj.(type) {
	case *corev1.Namespace:
		return o.ObjectMeta
	case *corev1.ConfigMap:
		return o.ObjectMeta
	case *corev1.Secret:
		return o.ObjectMeta
	case *corev1.Service:
		return o.ObjectMeta
	case *appsv1.StatefulSet:
		return o.ObjectMeta
	case *policyv1.PodDisruptionBudget:
		return o.ObjectMeta
	case *networkingv1.NetworkPolicy:
		return o.ObjectMeta
	}
	panic(fmt.Sprintf("objectMeta: %T", obj))
}

// matches reports whether selector selects labels.
func matches(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// TestKubernetesConfigStartsANode runs a real capsgate with the ConfigMap's
// capsgate.yaml, the files it names made the way secrets.yaml says, and
// the StatefulSet's arguments: it must start and answer.
func TestKubernetesConfigStartsANode(t *testing.T) {
	needProcesses(t)
	_, ms := loadManifests(t)
	cm := find[*corev1.ConfigMap](ms)[0]
	ss := find[*appsv1.StatefulSet](ms)[0]
	bin, err := farm.BuildOnce()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	if out, err := exec.Command(bin.Capslicense, "keygen", "--out", keys).CombinedOutput(); err != nil {
		t.Fatalf("capslicense keygen: %v: %s", err, out)
	}
	gossip := filepath.Join(dir, "gossip.key")
	token := filepath.Join(dir, "admin.token")
	_ = os.WriteFile(gossip, []byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))+"\n"), 0o600)
	_ = os.WriteFile(token, []byte("k8s-test-token"), 0o600)
	cfgFile := filepath.Join(dir, "capsgate.yaml")
	if err := os.WriteFile(cfgFile, []byte(cm.Data["capsgate.yaml"]), 0o644); err != nil {
		t.Fatal(err)
	}
	resp, admin, gaddr := farm.FreeAddr(t), farm.FreeAddr(t), farm.FreeAddr(t)
	// The StatefulSet's args, with $(POD_IP) as loopback; then what a pod
	// has at the paths the config names (flags win over the file).
	var args []string
	for _, a := range ss.Spec.Template.Spec.Containers[0].Args {
		if strings.HasPrefix(a, "--admin-addr=") {
			a = "--admin-addr=" + admin
		}
		args = append(args, strings.ReplaceAll(a, "/etc/capsgate/capsgate.yaml", cfgFile))
	}
	args = append(args, "--data-dir", filepath.Join(dir, "data"), "--resp-addr", resp, "--gossip-addr", gaddr,
		"--gossip-key-file", gossip, "--admin-token-file", token, "--vendor-key", filepath.Join(keys, "vendor.pub"),
		"--node-name", "capsgate-0")
	p := startProc(t, dir, "capsgate", append([]string{bin.Capsgate}, args...)...)
	if err := eventually(15*time.Second, func() error {
		if !p.running() {
			return fmt.Errorf("exited: %v", p.err)
		}
		_, err := httpGet("http://" + admin + "/readyz")
		return err
	}); err != nil {
		t.Fatalf("capsgate with the ConfigMap's capsgate.yaml: %v\n%s", err, p.tail(20))
	}
	n := &farm.Node{Name: "capsgate-0", RESPAddr: resp}
	if v, err := n.Do("PING"); err != nil || v != "PONG" {
		t.Fatalf("PING: %v %v", v, err)
	}
	t.Logf("capsgate started with the ConfigMap's capsgate.yaml and the StatefulSet's args %v: /readyz 200, PING answered", ss.Spec.Template.Spec.Containers[0].Args)
}

// TestKustomize renders the kustomization with kubectl's built-in kustomize
// when kubectl is there (offline; CI does not install it).
func TestKustomize(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("no kubectl: the kustomization is checked by TestKubernetesManifests only")
	}
	out, err := exec.Command(kubectl, "kustomize", k8sDir).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", k8sDir, err, out)
	}
	t.Logf("kubectl kustomize: %d objects", strings.Count(string(out), "\n---\n")+1)
}

// TestDockerfileBuildsStaticBinaries builds the commands with the
// Dockerfile's own go build line and checks each binary is static (no
// program interpreter, no dynamic section), and that the final stage runs
// as a non-root user.
func TestDockerfileBuildsStaticBinaries(t *testing.T) {
	needProcesses(t)
	data, err := os.ReadFile(filepath.Join("docker", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(data), "\\\n", " ")
	var froms []string
	var user string
	for _, l := range strings.Split(text, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "FROM":
			froms = append(froms, f[1])
			user = ""
		case "USER":
			user = f[1]
		}
	}
	if len(froms) < 2 {
		t.Errorf("Dockerfile has %d stages, want a multi-stage build", len(froms))
	}
	if uid, _, _ := strings.Cut(user, ":"); uid == "" || uid == "0" || uid == "root" {
		t.Errorf("the final stage runs as %q, want a non-root user", user)
	}
	m := regexp.MustCompile(`CGO_ENABLED=0 GOOS=linux go build (-trimpath -ldflags="-s -w") -o /out/\s+((?:\./cmd/\w+\s*)+)`).FindStringSubmatch(text)
	if m == nil {
		t.Fatal("the Dockerfile's go build line is not the one this test runs")
	}
	out := t.TempDir()
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out+"/")
	cmd.Args = append(cmd.Args, strings.Fields(m[2])...)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	start := time.Now()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, b)
	}
	for _, name := range strings.Fields(m[2]) {
		bin := filepath.Join(out, filepath.Base(name))
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
				t.Errorf("%s is not static: it has a %v program header", bin, p.Type)
			}
		}
		if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
			t.Errorf("%s links %v", bin, libs)
		}
		f.Close()
	}
	t.Logf("CGO_ENABLED=0 go build %s %s: static binaries in %s; final stage %s as user %s",
		m[1], strings.Join(strings.Fields(m[2]), " "), time.Since(start).Round(time.Millisecond), froms[len(froms)-1], user)
}

// TestSystemdUnit runs systemd-analyze verify on the unit (with ExecStart
// pointing at a real capsgate) when systemd-analyze is there.
func TestSystemdUnit(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("no systemd-analyze")
	}
	data, err := os.ReadFile(filepath.Join("systemd", "capsgate.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"User=capsgate", "NoNewPrivileges=yes", "ProtectSystem=strict", "StateDirectory=capsgate", "CapabilityBoundingSet=\n", "KillSignal=SIGTERM"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("capsgate.service lacks %q", strings.TrimSpace(want))
		}
	}
	bin, err := farm.BuildOnce()
	if err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(t.TempDir(), "capsgate.service")
	if err := os.WriteFile(unit, bytes.ReplaceAll(data, []byte("/usr/local/bin/capsgate"), []byte(bin.Capsgate)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", unit).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify capsgate.service: %v\n%s", err, out)
	}
}
