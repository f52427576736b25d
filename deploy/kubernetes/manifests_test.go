// Package kubernetes holds the Kubernetes manifests (plain YAML, a kustomize
// base) and their test. It is its own Go module so that k8s.io/api stays out
// of the service's module.
package kubernetes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// kustomization is the part of kustomize's Kustomization this base uses.
// Decoded strictly too: a misspelled field is an error here as in kustomize.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Labels     []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors,omitempty"`
	} `json:"labels,omitempty"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
	} `json:"images,omitempty"`
}

// decodeStrict converts YAML to JSON (duplicate keys are errors) and decodes
// it into out with unknown fields as errors.
func decodeStrict(doc []byte, out any) error {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	return dec.Decode(out)
}

// objects is every decoded manifest, by kind.
type objects struct {
	deployments []*appsv1.Deployment
	services    []*corev1.Service
	pdbs        []*policyv1.PodDisruptionBudget
	netpols     []*networkingv1.NetworkPolicy
	jobs        []*batchv1.Job
	accounts    []*corev1.ServiceAccount
	secrets     []*corev1.Secret
}

func load(t *testing.T, files ...string) *objects {
	t.Helper()
	o := &objects{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(raw), -1) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Fatalf("%s #%d: %v", f, i, err)
			}
			var obj any
			switch tm.APIVersion + "/" + tm.Kind {
			case "apps/v1/Deployment":
				d := &appsv1.Deployment{}
				o.deployments, obj = append(o.deployments, d), d
			case "v1/Service":
				s := &corev1.Service{}
				o.services, obj = append(o.services, s), s
			case "policy/v1/PodDisruptionBudget":
				p := &policyv1.PodDisruptionBudget{}
				o.pdbs, obj = append(o.pdbs, p), p
			case "networking.k8s.io/v1/NetworkPolicy":
				n := &networkingv1.NetworkPolicy{}
				o.netpols, obj = append(o.netpols, n), n
			case "batch/v1/Job":
				j := &batchv1.Job{}
				o.jobs, obj = append(o.jobs, j), j
			case "v1/ServiceAccount":
				a := &corev1.ServiceAccount{}
				o.accounts, obj = append(o.accounts, a), a
			case "v1/Secret":
				s := &corev1.Secret{}
				o.secrets, obj = append(o.secrets, s), s
			default:
				t.Fatalf("%s #%d: unexpected kind %s %s (add it to this test)", f, i, tm.APIVersion, tm.Kind)
			}
			if err := decodeStrict([]byte(doc), obj); err != nil {
				t.Fatalf("%s #%d (%s): %v", f, i, tm.Kind, err)
			}
		}
	}
	return o
}

func stripComments(doc string) string {
	var b strings.Builder
	for line := range strings.Lines(doc) {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// TestKustomization: every manifest in the folder is a resource of the base
// (except the Secret example, which holds placeholders), and every resource
// exists.
func TestKustomization(t *testing.T) {
	raw, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := decodeStrict(raw, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("kustomization.yaml: %s %s", k.APIVersion, k.Kind)
	}
	files, _ := filepath.Glob("*.yaml")
	for _, f := range files {
		if f == "kustomization.yaml" || strings.HasSuffix(f, ".example.yaml") {
			continue
		}
		if !slices.Contains(k.Resources, f) {
			t.Errorf("%s is not listed in kustomization.yaml's resources", f)
		}
	}
	for _, r := range k.Resources {
		if _, err := os.Stat(r); err != nil {
			t.Errorf("resource %s: %v", r, err)
		}
	}
	o := load(t, k.Resources...)
	for _, img := range k.Images {
		for _, c := range allContainers(o) {
			if c.Image == img.Name {
				return
			}
		}
		t.Errorf("images: %s matches no container image", img.Name)
	}
}

func allContainers(o *objects) []corev1.Container {
	var cs []corev1.Container
	for _, d := range o.deployments {
		cs = append(cs, d.Spec.Template.Spec.Containers...)
	}
	for _, j := range o.jobs {
		cs = append(cs, j.Spec.Template.Spec.Containers...)
	}
	return cs
}

// imageDefaults reads the Containerfile: its EXPOSEd ports and the
// listener addresses it sets.
func imageDefaults(t *testing.T) (exposed []int32, env map[string]string) {
	t.Helper()
	raw, err := os.ReadFile("../../Containerfile")
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines.
	text := strings.ReplaceAll(string(raw), "\\\n", " ")
	env = map[string]string{}
	for line := range strings.Lines(text) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "EXPOSE":
			for _, p := range f[1:] {
				n, err := strconv.Atoi(strings.TrimSuffix(p, "/tcp"))
				if err != nil {
					t.Fatalf("Containerfile EXPOSE %s", p)
				}
				exposed = append(exposed, int32(n))
			}
		case "ENV":
			for _, kv := range f[1:] {
				if k, v, ok := strings.Cut(kv, "="); ok {
					env[k] = v
				}
			}
		}
	}
	return exposed, env
}

// containerPort resolves a probe or service port (number or name) against
// the container's declared ports.
func containerPort(c corev1.Container, p intstr.IntOrString) (corev1.ContainerPort, bool) {
	for _, cp := range c.Ports {
		if (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) || (p.Type == intstr.String && cp.Name == p.StrVal) {
			return cp, true
		}
	}
	return corev1.ContainerPort{}, false
}

func listenPort(addr string) int32 {
	_, port, ok := strings.Cut(addr, ":")
	n, err := strconv.Atoi(port)
	if !ok || err != nil {
		return -1
	}
	return int32(n)
}

// followsReadiness says how a probe asks for readiness, or "": secretsd's
// gRPC health (every service name, "" included) and /readyz both answer
// from the readiness checks (database, migrations, KEKs); an exec probe
// cannot run in the image (no shell, no tools).
func followsReadiness(p *corev1.Probe) string {
	switch {
	case p.GRPC != nil:
		service := ""
		if p.GRPC.Service != nil {
			service = *p.GRPC.Service
		}
		return fmt.Sprintf("asks gRPC health (service %q)", service)
	case p.HTTPGet != nil && readyzPath(p.HTTPGet.Path):
		return "asks /readyz"
	case p.Exec != nil:
		return "runs a command"
	}
	return ""
}

func readyzPath(p string) bool {
	p, _, _ = strings.Cut(p, "?")
	return path.Clean("/"+p) == "/readyz"
}

// TestDeployment checks what an operator relies on: replicas, probes that
// point at ports the server listens on and paths it serves, security
// context, resources, and settings from the Secret.
func TestDeployment(t *testing.T) {
	o := load(t, "deployment.yaml", "secret.example.yaml")
	if len(o.deployments) != 1 || len(o.secrets) != 1 {
		t.Fatalf("want one Deployment and one example Secret, got %d and %d", len(o.deployments), len(o.secrets))
	}
	d, secret := o.deployments[0], o.secrets[0]
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("replicas %v, want 2 or more", d.Spec.Replicas)
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("the selector does not match the pod template's labels (%v)", err)
	}
	if ru := d.Spec.Strategy.RollingUpdate; ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 {
		t.Errorf("rolling update should keep every replica until its successor is ready (maxUnavailable 0)")
	}
	pod := d.Spec.Template.Spec
	if pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot {
		t.Errorf("pod securityContext.runAsNonRoot must be true")
	}
	exposed, imageEnv := imageDefaults(t)
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	// The ports secretsd listens on: the Deployment's env, else the image's.
	addr := func(name string) string {
		if e, ok := env[name]; ok {
			return e.Value
		}
		return imageEnv[name]
	}
	grpcPort, httpPort := listenPort(addr("SECRETS_GRPC_ADDR")), listenPort(addr("SECRETS_HTTP_ADDR"))
	for _, p := range []int32{grpcPort, httpPort} {
		if !slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.ContainerPort == p }) {
			t.Errorf("secretsd listens on %d but the container declares no such port", p)
		}
		if !slices.Contains(exposed, p) {
			t.Errorf("secretsd listens on %d but the Containerfile does not EXPOSE it", p)
		}
	}

	// Liveness and startup: /healthz on the HTTP port, which answers 200
	// while the process serves. Neither may follow readiness: a KMS or
	// database outage would restart every replica, and a replica cannot
	// start without its KEK.
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
	}{{"livenessProbe", c.LivenessProbe}, {"startupProbe", c.StartupProbe}} {
		if p.probe == nil {
			t.Errorf("%s is missing", p.name)
			continue
		}
		if why := followsReadiness(p.probe); why != "" {
			t.Errorf("%s %s, which follows readiness: an outage of the KMS or the database would restart every replica", p.name, why)
		}
		if g := p.probe.HTTPGet; g == nil || g.Path != "/healthz" {
			t.Errorf("%s must be httpGet /healthz", p.name)
		} else if cp, ok := containerPort(c, g.Port); !ok || cp.ContainerPort != httpPort {
			t.Errorf("%s port %v is not the HTTP port %d", p.name, g.Port.String(), httpPort)
		}
	}
	// Readiness: /readyz on the HTTP port (database, migrations, KEKs).
	if rp := c.ReadinessProbe; rp == nil || rp.HTTPGet == nil {
		t.Errorf("readinessProbe must be an httpGet probe")
	} else {
		if rp.HTTPGet.Path != "/readyz" {
			t.Errorf("readinessProbe path %q, want /readyz", rp.HTTPGet.Path)
		}
		if cp, ok := containerPort(c, rp.HTTPGet.Port); !ok || cp.ContainerPort != httpPort {
			t.Errorf("readinessProbe port %v is not the HTTP port %d", rp.HTTPGet.Port.String(), httpPort)
		}
	}

	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("readOnlyRootFilesystem must be true")
	}
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("allowPrivilegeEscalation must be false")
	}
	if sc == nil || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("capabilities must drop ALL")
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Errorf("resource requests for cpu and memory must be set")
	}
	if c.Resources.Limits.Memory().IsZero() {
		t.Errorf("a memory limit must be set")
	}

	// Secrets come from the Secret, by keys the example Secret has.
	for _, name := range []string{"DATABASE_URL", "SECRETS_KEK_URL"} {
		e, ok := env[name]
		if !ok || e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			t.Errorf("%s must come from a Secret (valueFrom.secretKeyRef)", name)
			continue
		}
		checkSecretRef(t, secret, e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key)
	}
	// The audit signing key: a file from the Secret, named by the flag.
	mounted := false
	for _, v := range pod.Volumes {
		if v.Secret == nil {
			continue
		}
		for _, it := range v.Secret.Items {
			checkSecretRef(t, secret, v.Secret.SecretName, it.Key)
			for _, m := range c.VolumeMounts {
				if m.Name == v.Name && slices.Contains(c.Args, "--audit-signing-key="+filepath.Join(m.MountPath, it.Path)) {
					mounted = true
				}
			}
		}
	}
	if !mounted {
		t.Errorf("--audit-signing-key must name the file mounted from the Secret")
	}
	if pod.TerminationGracePeriodSeconds == nil || *pod.TerminationGracePeriodSeconds <= 15 {
		t.Errorf("terminationGracePeriodSeconds must exceed secretsd's 15s --shutdown-timeout")
	}
}

func checkSecretRef(t *testing.T, s *corev1.Secret, name, key string) {
	t.Helper()
	if name != s.Name {
		t.Errorf("Secret %q referenced, the example Secret is %q", name, s.Name)
	}
	if _, ok := s.StringData[key]; !ok {
		t.Errorf("key %q referenced but absent from secret.example.yaml", key)
	}
}

// TestServicePDBNetworkPolicy: the Service exposes both ports by the
// container's port names, and the Service, PDB and NetworkPolicy all select
// the Deployment's pods (and not the migration Job's).
func TestServicePDBNetworkPolicy(t *testing.T) {
	o := load(t, "deployment.yaml", "service.yaml", "pdb.yaml", "networkpolicy.yaml", "job-migrate.yaml")
	d := o.deployments[0]
	c := d.Spec.Template.Spec.Containers[0]
	podLabels := labels.Set(d.Spec.Template.Labels)
	jobLabels := labels.Set(o.jobs[0].Spec.Template.Labels)

	if len(o.services) != 1 {
		t.Fatalf("%d Services, want 1", len(o.services))
	}
	svc := o.services[0]
	svcSel := labels.SelectorFromSet(svc.Spec.Selector)
	if !svcSel.Matches(podLabels) || svcSel.Matches(jobLabels) {
		t.Errorf("the Service must select the server pods and not the migration job")
	}
	var ports []int32
	for _, p := range svc.Spec.Ports {
		cp, ok := containerPort(c, p.TargetPort)
		if !ok {
			t.Errorf("Service port %s: targetPort %s is no container port", p.Name, p.TargetPort.String())
			continue
		}
		ports = append(ports, cp.ContainerPort)
	}
	for _, cp := range c.Ports {
		if !slices.Contains(ports, cp.ContainerPort) {
			t.Errorf("container port %s (%d) is not in the Service", cp.Name, cp.ContainerPort)
		}
	}

	if len(o.pdbs) != 1 {
		t.Fatalf("%d PodDisruptionBudgets, want 1", len(o.pdbs))
	}
	pdb := o.pdbs[0]
	if sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector); err != nil || !sel.Matches(podLabels) || sel.Matches(jobLabels) {
		t.Errorf("the PDB must select the server pods only (%v)", err)
	}
	if pdb.Spec.MinAvailable == nil && pdb.Spec.MaxUnavailable == nil {
		t.Errorf("the PDB sets neither minAvailable nor maxUnavailable")
	}
	if pdb.Spec.MinAvailable != nil && pdb.Spec.MinAvailable.IntValue() >= int(*d.Spec.Replicas) {
		t.Errorf("PDB minAvailable %s would block every drain with %d replicas", pdb.Spec.MinAvailable.String(), *d.Spec.Replicas)
	}

	if len(o.netpols) != 1 {
		t.Fatalf("%d NetworkPolicies, want 1", len(o.netpols))
	}
	np := o.netpols[0]
	if sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector); err != nil || !sel.Matches(podLabels) {
		t.Errorf("the NetworkPolicy must select the server pods (%v)", err)
	}
	for _, rule := range np.Spec.Ingress {
		for _, p := range rule.Ports {
			if p.Port == nil {
				continue
			}
			if _, ok := containerPort(c, *p.Port); !ok {
				t.Errorf("NetworkPolicy ingress port %s is no container port", p.Port.String())
			}
		}
	}
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
		t.Errorf("the NetworkPolicy does not restrict ingress")
	}
}

// TestMigrationJob: the Job runs `secretsd migrate` from the same image with
// the database URL from the Secret, under the same restrictions.
func TestMigrationJob(t *testing.T) {
	o := load(t, "deployment.yaml", "job-migrate.yaml", "secret.example.yaml")
	if len(o.jobs) != 1 {
		t.Fatalf("%d Jobs, want 1", len(o.jobs))
	}
	j := o.jobs[0]
	c := j.Spec.Template.Spec.Containers[0]
	if c.Image != o.deployments[0].Spec.Template.Spec.Containers[0].Image {
		t.Errorf("the Job's image %q differs from the Deployment's", c.Image)
	}
	if fmt.Sprint(c.Args) != "[migrate]" || len(c.Command) != 0 {
		t.Errorf("the Job runs %v %v, want the image's entrypoint with [migrate]", c.Command, c.Args)
	}
	// The Job migrates as the tables' owner, the Deployment serves as the
	// service role: two keys of the Secret, two roles.
	jobRef := secretEnvRef(c, "DATABASE_URL")
	serverRef := secretEnvRef(o.deployments[0].Spec.Template.Spec.Containers[0], "DATABASE_URL")
	if jobRef == nil || serverRef == nil {
		t.Fatalf("the Job and the Deployment need DATABASE_URL from the Secret")
	}
	checkSecretRef(t, o.secrets[0], jobRef.Name, jobRef.Key)
	jobKey, serverKey := jobRef.Key, serverRef.Key
	if jobKey == serverKey {
		t.Errorf("the Job and the Deployment read DATABASE_URL from the same key %q: the Job needs the owner's URL, the server the service role's (it refuses the owner)", jobKey)
	}
	serviceRole := defaultServiceRole(t)
	if u := exampleUser(t, o.secrets[0], serverKey); u != serviceRole {
		t.Errorf("the example Secret's %s connects as %q, want the service role %q (secretsd refuses the owner and superusers)", serverKey, u, serviceRole)
	}
	if u := exampleUser(t, o.secrets[0], jobKey); u == serviceRole || u == "" {
		t.Errorf("the example Secret's %s connects as %q: the migration needs the tables' owner, not the service role", jobKey, u)
	}
	if rp := j.Spec.Template.Spec.RestartPolicy; rp != corev1.RestartPolicyOnFailure && rp != corev1.RestartPolicyNever {
		t.Errorf("restartPolicy %q", rp)
	}
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("the Job's container must have a read-only root filesystem")
	}
	if psc := j.Spec.Template.Spec.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("the Job must run as non-root")
	}
}

// secretEnvRef returns the Secret key the container's environment variable
// name comes from (nil if it does not come from a Secret).
func secretEnvRef(c corev1.Container, name string) *corev1.SecretKeySelector {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			return e.ValueFrom.SecretKeyRef
		}
	}
	return nil
}

// exampleUser is the user of the database URL under key in the example
// Secret.
func exampleUser(t *testing.T, s *corev1.Secret, key string) string {
	t.Helper()
	u, err := url.Parse(s.StringData[key])
	if err != nil || u.User == nil {
		t.Errorf("secret.example.yaml %s: not a database URL with a user (%v)", key, err)
		return ""
	}
	return u.User.Username()
}

// defaultServiceRole reads the role `secretsd migrate` creates from the
// migrations package (this module does not import the service's).
func defaultServiceRole(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile("../../migrations/roles.go")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`const DefaultServiceRole = "([a-z0-9_]+)"`).FindSubmatch(raw)
	if m == nil {
		t.Fatal("migrations/roles.go declares no DefaultServiceRole")
	}
	return string(m[1])
}

// TestStrictDecoding proves the decoder refuses what kubectl would: an
// unknown field (a typo such as "readinesProbe") and a duplicate key.
func TestStrictDecoding(t *testing.T) {
	raw, err := os.ReadFile("deployment.yaml")
	if err != nil {
		t.Fatal(err)
	}
	typo := strings.Replace(string(raw), "readinessProbe:", "readinesProbe:", 1)
	if err := decodeStrict([]byte(typo), &appsv1.Deployment{}); err == nil || !strings.Contains(err.Error(), "readinesProbe") {
		t.Errorf("a misspelled field decoded without error (%v)", err)
	}
	dup := strings.Replace(string(raw), "  replicas: 2\n", "  replicas: 2\n  replicas: 3\n", 1)
	if err := decodeStrict([]byte(dup), &appsv1.Deployment{}); err == nil {
		t.Errorf("a duplicate key decoded without error")
	}
}

// secretFileMode is what kubelet makes of a file of a Secret (or
// projected) volume: owned by root, group root or, with the pod's fsGroup,
// that group plus group read (kubelet ORs 0440 into read-only volumes'
// files, whatever defaultMode says: kubernetes/kubernetes#57923).
func secretFileMode(mode int32, fsGroup *int64) (gid int64, perm int32) {
	if fsGroup == nil {
		return 0, mode
	}
	return *fsGroup, mode | 0o440
}

// TestSecretFilesReadable: every file the container mounts from a Secret
// can be read by the uid it runs as, and by no other uid (no "others"
// bits). Dropping fsGroup would leave the audit signing key root's and
// unreadable; a 0444 mode would open it to every uid.
func TestSecretFilesReadable(t *testing.T) {
	o := load(t, "deployment.yaml")
	pod := o.deployments[0].Spec.Template.Spec
	c := pod.Containers[0]
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Fatalf("the pod must set a non-root runAsUser")
	}
	groups := []int64{}
	if psc.RunAsGroup != nil {
		groups = append(groups, *psc.RunAsGroup)
	}
	groups = append(groups, psc.SupplementalGroups...)
	if psc.FSGroup != nil {
		groups = append(groups, *psc.FSGroup)
	}
	files := 0
	for _, v := range pod.Volumes {
		if v.Secret == nil || !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == v.Name }) {
			continue
		}
		mode := int32(0o644) // the API's default
		if v.Secret.DefaultMode != nil {
			mode = *v.Secret.DefaultMode
		}
		for _, it := range v.Secret.Items {
			m := mode
			if it.Mode != nil {
				m = *it.Mode
			}
			gid, perm := secretFileMode(m, psc.FSGroup)
			readable := perm&0o004 != 0 || (perm&0o040 != 0 && slices.Contains(groups, gid))
			if !readable {
				t.Errorf("volume %s, %s: kubelet makes it root:%d %04o, which uid %d (groups %v) cannot read", v.Name, it.Path, gid, perm, *psc.RunAsUser, groups)
			}
			if perm&0o007 != 0 {
				t.Errorf("volume %s, %s: mode %04o lets every uid read it", v.Name, it.Path, perm)
			}
			files++
		}
	}
	if files == 0 {
		t.Errorf("no file is mounted from a Secret (the audit signing key should be)")
	}
}

// egressAllows reports whether the policy lets the pods open a connection
// to ip:port over proto (peers outside the cluster: only ipBlocks and
// empty "to" lists match them).
func egressAllows(np *networkingv1.NetworkPolicy, ip string, port int32, proto corev1.Protocol) bool {
	addr := net.ParseIP(ip)
	for _, rule := range np.Spec.Egress {
		peerOK := len(rule.To) == 0
		for _, peer := range rule.To {
			if peer.IPBlock == nil {
				continue
			}
			_, block, err := net.ParseCIDR(peer.IPBlock.CIDR)
			if err != nil || !block.Contains(addr) {
				continue
			}
			excluded := false
			for _, ex := range peer.IPBlock.Except {
				if _, e, err := net.ParseCIDR(ex); err == nil && e.Contains(addr) {
					excluded = true
				}
			}
			peerOK = peerOK || !excluded
		}
		if !peerOK {
			continue
		}
		if len(rule.Ports) == 0 {
			return true
		}
		for _, p := range rule.Ports {
			pr := corev1.ProtocolTCP
			if p.Protocol != nil {
				pr = *p.Protocol
			}
			if pr != proto {
				continue
			}
			if p.Port == nil {
				return true
			}
			if p.Port.Type != intstr.Int {
				continue // a named port names a port of the destination pod
			}
			end := p.Port.IntVal
			if p.EndPort != nil {
				end = *p.EndPort
			}
			if port >= p.Port.IntVal && port <= end {
				return true
			}
		}
	}
	return false
}

// TestNetworkPolicyEgress: the pods reach what the documented KEK drivers,
// PostgreSQL, DNS and OTLP need, including the link-local credential
// endpoints of workload identity, and plain HTTP nowhere else.
func TestNetworkPolicyEgress(t *testing.T) {
	o := load(t, "networkpolicy.yaml")
	np := o.netpols[0]
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
		t.Skip("the NetworkPolicy does not restrict egress")
	}
	const public = "203.0.113.10" // any address outside the cluster
	udp, tcp := corev1.ProtocolUDP, corev1.ProtocolTCP
	for _, want := range []struct {
		what  string
		ip    string
		port  int32
		proto corev1.Protocol
	}{
		{"DNS", "10.96.0.10", 53, udp},
		{"DNS over TCP", "10.96.0.10", 53, tcp},
		{"PostgreSQL", "10.0.0.5", 5432, tcp},
		{"a KMS (awskms, gcpkms, azurekeyvault) and token endpoints over HTTPS", public, 443, tcp},
		{"Vault / OpenBao transit (hashivault://, VAULT_ADDR's default port)", public, 8200, tcp},
		{"OTLP/HTTP", "10.0.0.6", 4318, tcp},
		{"the instance metadata service (GCE, GKE Workload Identity on Dataplane V2, EC2, Azure managed identity)", "169.254.169.254", 80, tcp},
		{"the EC2 instance metadata service over IPv6", "fd00:ec2::254", 80, tcp},
		{"the EKS Pod Identity agent", "169.254.170.23", 80, tcp},
		{"the EKS Pod Identity agent over IPv6", "fd00:ec2::23", 80, tcp},
		{"GKE's metadata server (Workload Identity without Dataplane V2)", "169.254.169.252", 988, tcp},
	} {
		if !egressAllows(np, want.ip, want.port, want.proto) {
			t.Errorf("egress to %s (%s:%d/%s) is blocked", want.what, want.ip, want.port, want.proto)
		}
	}
	for _, deny := range []struct {
		ip   string
		port int32
	}{{public, 80}, {"10.0.0.7", 80}, {"169.254.169.254", 8080}, {public, 988}} {
		if egressAllows(np, deny.ip, deny.port, tcp) {
			t.Errorf("egress to %s:%d is open: plain HTTP is for the link-local credential endpoints only", deny.ip, deny.port)
		}
	}
}
