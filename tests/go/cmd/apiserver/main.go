// Command apiserver runs a real kube-apiserver, the one k8s.io/kubernetes tests its
// own API with (cmd/kube-apiserver/app/testing), on an embedded etcd, for Spookd's
// tests: manifests and Helm renderings are created against it, RBAC is enforced by
// the real authorizer (Node,RBAC), and the ConfigMap watcher talks to it.
//
//	apiserver -workdir DIR [-address IP]
//
// -address is the IP address clients connect to (default 127.0.0.1). Given another
// address (the end-to-end node's side of a veth pair), the API server is what a
// cluster's is to its pods: that address is in the serving certificate with
// 10.0.0.1 (the kubernetes Service's cluster IP), and it is published as the
// kubernetes Service's endpoint (EndpointSlice and Endpoints), which kube-proxy turns
// into the Service's rules. (The test server binds loopback only, so its own endpoint
// reconciler is off; this program publishes the stable front door instead, as an
// operator does for API servers behind a load balancer.) The API server reaches
// kubelets at their InternalIP with a client certificate from the same CA
// (pki/kubelet-client.crt), so that exec, logs and port-forward work.
//
// On start it writes DIR/kubeconfig (an admin in system:masters) and prints one JSON
// line {"event":"ready",...} on stdout; everything else goes to stderr. It then reads
// commands, one per line, on stdin and answers each with one JSON line:
//
//	restart  stop the API server and start a new one on the same etcd
//	down     stop the API server (clients see refused connections)
//	up       start it again
//	compact  compact etcd at its current revision (older watches get 410 Gone)
//	quit     shut down (so do stdin EOF, SIGTERM and SIGINT)
//
// The address, CA and token stay the same across restarts: clients connect to a
// TCP proxy that this process keeps open, and the serving certificate and the token
// are made once per workdir. So a client that keeps its kubeconfig (a watch, say)
// sees the server go away and come back, like a control-plane upgrade.
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/server/v3/embed"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	kubeapiservertesting "k8s.io/kubernetes/cmd/kube-apiserver/app/testing"
	"spookd.test/harness/internal/kubeversion"
)

func main() {
	workdir := flag.String("workdir", "", "directory for etcd data, certificates, the token and the kubeconfig (required)")
	verbose := flag.Bool("verbose", false, "pass the API server's own log lines through to stderr")
	address := flag.String("address", "127.0.0.1", "the IP address the API server is reached at")
	flag.Parse()
	ip := net.ParseIP(*address)
	if ip == nil {
		fmt.Fprintf(os.Stderr, "apiserver: -address %q is not an IP address\n", *address)
		os.Exit(2)
	}
	if *workdir == "" {
		fmt.Fprintln(os.Stderr, "apiserver: -workdir is required")
		os.Exit(2)
	}
	if err := kubeversion.Stamp(); err != nil {
		fmt.Fprintf(os.Stderr, "apiserver: version: %v\n", err)
		os.Exit(1)
	}
	if err := run(*workdir, *verbose, ip); err != nil {
		fmt.Fprintf(os.Stderr, "apiserver: %v\n", err)
		os.Exit(1)
	}
}

// event is one line of the stdout protocol.
type event struct {
	Event        string  `json:"event"`
	Server       string  `json:"server,omitempty"`
	Kubeconfig   string  `json:"kubeconfig,omitempty"`
	CAFile       string  `json:"caFile,omitempty"`
	Token        string  `json:"token,omitempty"`
	Etcd         string  `json:"etcd,omitempty"`
	StartSeconds float64 `json:"startSeconds,omitempty"`
	Error        string  `json:"error,omitempty"`
}

func emit(e event) {
	line, _ := json.Marshal(e)
	fmt.Println(string(line))
}

func run(workdir string, verbose bool, address net.IP) error {
	workdir, err := filepath.Abs(workdir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(workdir, 0o700); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	began := time.Now()
	pki, err := ensurePKI(filepath.Join(workdir, "pki"), address)
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	token, tokenFile, err := ensureToken(workdir)
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	etcd, etcdURL, err := startEtcd(filepath.Join(workdir, "etcd"))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer etcd.Close()

	front, err := newProxy(address)
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	defer front.close()
	serverURL := "https://" + front.addr()

	kubeconfig := filepath.Join(workdir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, serverURL, pki.caFile, token); err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}

	storage := storagebackend.NewDefaultConfig("/registry", nil)
	storage.Transport.ServerList = []string{etcdURL}
	flags := []string{
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--token-auth-file=" + tokenFile,
		// Not --tls-cert-file: StartTestServer points the peer-proxy CA at
		// <cert-dir>/apiserver.crt, which must therefore exist.
		"--cert-dir=" + filepath.Dir(pki.certFile),
		"--kubelet-client-certificate=" + pki.kubeletCertFile,
		"--kubelet-client-key=" + pki.kubeletKeyFile,
		// A node's host name need not resolve (the e2e node's does not).
		"--kubelet-preferred-address-types=InternalIP,Hostname",
	}
	api := &apiServer{workdir: workdir, storage: storage, flags: flags, verbose: verbose, front: front}
	if err := api.up(); err != nil {
		return err
	}
	defer api.down()
	if !address.IsLoopback() {
		if err := publishEndpoint(ctx, kubeconfig, front.listener.Addr().(*net.TCPAddr)); err != nil {
			return fmt.Errorf("kubernetes Service endpoint: %w", err)
		}
	}

	ready := event{Server: serverURL, Kubeconfig: kubeconfig, CAFile: pki.caFile, Token: token, Etcd: etcdURL}
	ready.Event = "ready"
	ready.StartSeconds = time.Since(began).Seconds()
	emit(ready)

	commands := make(chan string)
	go func() {
		defer close(commands)
		scanner := bufio.NewScanner(os.Stdin)
		for scanner.Scan() {
			commands <- scanner.Text()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case command, open := <-commands:
			if !open || command == "quit" {
				return nil
			}
			began := time.Now()
			var err error
			switch command {
			case "restart":
				api.down()
				err = api.up()
			case "down":
				api.down()
			case "up":
				err = api.up()
			case "compact":
				err = compact(ctx, etcd)
			default:
				err = fmt.Errorf("unknown command %q (restart, down, up, compact, quit)", command)
			}
			answer := event{Event: command, StartSeconds: time.Since(began).Seconds()}
			if err != nil {
				answer.Event, answer.Error = "error", err.Error()
			}
			emit(answer)
		}
	}
}

// apiServer is the kube-apiserver that can be stopped and started again.
type apiServer struct {
	workdir string
	storage *storagebackend.Config
	flags   []string
	verbose bool
	front   *proxy

	server *kubeapiservertesting.TestServer
	tb     *processTB
}

func (a *apiServer) up() error {
	if a.server != nil {
		return errors.New("the API server is already up")
	}
	tb := newProcessTB(a.workdir, a.verbose)
	options := kubeapiservertesting.NewDefaultTestServerOptions()
	// The invariant checks scrape metrics at tear-down to fail a Go test; here
	// they would only slow a restart down.
	options.DisableInvariantChecks = true
	server, err := kubeapiservertesting.StartTestServer(tb, options, a.flags, a.storage)
	if err != nil {
		tb.cleanup()
		return fmt.Errorf("start kube-apiserver: %w", err)
	}
	a.server, a.tb = &server, tb
	a.front.setBackend(net.JoinHostPort("127.0.0.1", strconv.Itoa(server.ServerOpts.SecureServing.BindPort)))
	return nil
}

func (a *apiServer) down() {
	if a.server == nil {
		return
	}
	a.front.setBackend("")
	a.server.TearDownFn()
	a.tb.cleanup()
	a.server, a.tb = nil, nil
}

// processTB is the test-context StartTestServer wants, outside a Go test: logs go
// to stderr, a fatal error ends the process, cleanups run at tear-down.
type processTB struct {
	mu       sync.Mutex
	dir      string
	verbose  bool
	cleanups []func()
	failed   bool
}

func newProcessTB(dir string, verbose bool) *processTB {
	return &processTB{dir: dir, verbose: verbose}
}

func (t *processTB) cleanup() {
	t.mu.Lock()
	cleanups := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
}

func (t *processTB) Attr(string, string) {}
func (t *processTB) Chdir(dir string)    { _ = os.Chdir(dir) }
func (t *processTB) Helper()             {}
func (t *processTB) Name() string        { return "spookd-apiserver" }
func (t *processTB) Setenv(k, v string)  { _ = os.Setenv(k, v) }
func (t *processTB) Error(args ...any)   { t.Log(args...); t.Fail() }
func (t *processTB) Fatal(args ...any)   { t.Log(args...); t.FailNow() }
func (t *processTB) Skip(args ...any)    { t.Fatal(args...) }
func (t *processTB) SkipNow()            { t.FailNow() }
func (t *processTB) Skipped() bool       { return false }
func (t *processTB) Errorf(f string, args ...any) {
	t.Error(fmt.Sprintf(f, args...))
}
func (t *processTB) Fatalf(f string, args ...any) {
	t.Fatal(fmt.Sprintf(f, args...))
}
func (t *processTB) Skipf(f string, args ...any) { t.Fatalf(f, args...) }
func (t *processTB) Logf(f string, args ...any)  { t.Log(fmt.Sprintf(f, args...)) }

func (t *processTB) Log(args ...any) {
	if t.verbose {
		fmt.Fprintln(os.Stderr, args...)
	}
}

func (t *processTB) Fail() {
	t.mu.Lock()
	t.failed = true
	t.mu.Unlock()
}

func (t *processTB) FailNow() {
	fmt.Fprintln(os.Stderr, "apiserver: fatal error in the test server, exiting")
	os.Exit(1)
}

func (t *processTB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

func (t *processTB) Cleanup(f func()) {
	t.mu.Lock()
	t.cleanups = append(t.cleanups, f)
	t.mu.Unlock()
}

func (t *processTB) TempDir() string {
	dir, err := os.MkdirTemp(t.dir, "tmp")
	if err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// compact discards etcd's history up to the current revision, so that a watch
// from an older resourceVersion gets 410 Gone, as after a real compaction.
func compact(ctx context.Context, e *embed.Etcd) error {
	revision := e.Server.KV().Rev()
	_, err := e.Server.Compact(ctx, &etcdserverpb.CompactionRequest{Revision: revision, Physical: true})
	return err
}

// startEtcd runs etcd in this process; its data outlives API server restarts.
func startEtcd(dir string) (*embed.Etcd, string, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, "", err
	}
	cfg := embed.NewConfig()
	cfg.Dir = dir
	// A test store: losing it on a machine crash costs nothing.
	cfg.UnsafeNoFsync = true
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{"stderr"}
	client := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))}
	peer := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, "", errors.New("etcd took more than 60 s to start")
	}
	return e, client.String(), nil
}

func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// proxy is the stable front door: a TCP relay to whichever API server is up.
type proxy struct {
	listener net.Listener
	mu       sync.Mutex
	backend  string
	conns    map[net.Conn]struct{}
}

func newProxy(address net.IP) (*proxy, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(address.String(), "0"))
	if err != nil {
		return nil, err
	}
	p := &proxy{listener: l, conns: map[net.Conn]struct{}{}}
	go p.serve()
	return p, nil
}

func (p *proxy) addr() string { return p.listener.Addr().String() }

func (p *proxy) close() {
	_ = p.listener.Close()
	p.setBackend("")
}

// setBackend switches the target and drops every relayed connection, as a server
// going away would.
func (p *proxy) setBackend(backend string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.backend = backend
	for c := range p.conns {
		_ = c.Close()
	}
	clear(p.conns)
}

func (p *proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.backend == "" {
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *proxy) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		delete(p.conns, c)
		_ = c.Close()
	}
}

func (p *proxy) serve() {
	for {
		client, err := p.listener.Accept()
		if err != nil {
			return
		}
		go p.relay(client)
	}
}

func (p *proxy) relay(client net.Conn) {
	p.mu.Lock()
	backend := p.backend
	p.mu.Unlock()
	if backend == "" {
		_ = client.Close()
		return
	}
	server, err := net.DialTimeout("tcp", backend, 5*time.Second)
	if err != nil {
		_ = client.Close()
		return
	}
	if !p.track(client, server) {
		_ = client.Close()
		_ = server.Close()
		return
	}
	defer p.untrack(client, server)
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(server, client); done <- struct{}{} }()
	go func() { _, _ = io.Copy(client, server); done <- struct{}{} }()
	<-done
}

// pki holds a CA and a serving certificate for 127.0.0.1, made once per workdir so
// that a restarted API server presents the same identity.
type pki struct{ caFile, certFile, keyFile, kubeletCertFile, kubeletKeyFile string }

func ensurePKI(dir string, address net.IP) (pki, error) {
	p := pki{
		caFile:          filepath.Join(dir, "ca.crt"),
		certFile:        filepath.Join(dir, "apiserver.crt"),
		keyFile:         filepath.Join(dir, "apiserver.key"),
		kubeletCertFile: filepath.Join(dir, "kubelet-client.crt"),
		kubeletKeyFile:  filepath.Join(dir, "kubelet-client.key"),
	}
	if _, err := os.Stat(p.kubeletKeyFile); err == nil {
		return p, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return p, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	now := time.Now().Add(-time.Hour)
	caTemplate := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "spookd-test-ca"},
		NotBefore:             now,
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		return p, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return p, err
	}
	serverKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	serverTemplate := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now,
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), net.ParseIP(serviceIP), address},
		DNSNames:     []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
	}
	serverDER, err := x509.CreateCertificate(rand.Reader, serverTemplate, ca, &serverKey.PublicKey, caKey)
	if err != nil {
		return p, err
	}
	keyDER, err := x509.MarshalECPrivateKey(serverKey)
	if err != nil {
		return p, err
	}
	// The API server's identity towards kubelets (exec, logs): a client certificate
	// the kubelets trust through the same CA (their authentication.x509.clientCAFile).
	clientKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	clientTemplate := &x509.Certificate{
		SerialNumber: big.NewInt(3),
		Subject:      pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
		NotBefore:    now,
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	clientDER, err := x509.CreateCertificate(rand.Reader, clientTemplate, ca, &clientKey.PublicKey, caKey)
	if err != nil {
		return p, err
	}
	clientKeyDER, err := x509.MarshalECPrivateKey(clientKey)
	if err != nil {
		return p, err
	}
	writes := []struct {
		path  string
		block pem.Block
	}{
		{p.caFile, pem.Block{Type: "CERTIFICATE", Bytes: caDER}},
		{p.certFile, pem.Block{Type: "CERTIFICATE", Bytes: serverDER}},
		{p.keyFile, pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}},
		{p.kubeletCertFile, pem.Block{Type: "CERTIFICATE", Bytes: clientDER}},
		// The key last: its presence says the set is complete.
		{p.kubeletKeyFile, pem.Block{Type: "EC PRIVATE KEY", Bytes: clientKeyDER}},
	}
	for _, w := range writes {
		if err := os.WriteFile(w.path, pem.EncodeToMemory(&w.block), 0o600); err != nil {
			return p, err
		}
	}
	return p, nil
}

// ensureToken makes the admin's bearer token (group system:masters) once per workdir.
func ensureToken(workdir string) (token, tokenFile string, err error) {
	tokenFile = filepath.Join(workdir, "tokens.csv")
	tokenPath := filepath.Join(workdir, "token")
	if raw, err := os.ReadFile(tokenPath); err == nil {
		return string(raw), tokenFile, nil
	}
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return "", "", err
	}
	token = hex.EncodeToString(secret)
	if err := os.WriteFile(tokenFile, []byte(token+",admin,admin,system:masters\n"), 0o600); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(tokenPath, []byte(token), 0o600); err != nil {
		return "", "", err
	}
	return token, tokenFile, nil
}

func writeKubeconfig(path, server, caFile, token string) error {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	config := clientcmdapi.NewConfig()
	config.Clusters["spookd-test"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	config.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: token}
	config.Contexts["spookd-test"] = &clientcmdapi.Context{Cluster: "spookd-test", AuthInfo: "admin", Namespace: "default"}
	config.CurrentContext = "spookd-test"
	return clientcmd.WriteToFile(*config, path)
}

// serviceIP is the kubernetes Service's cluster IP: the first address of the test
// server's service range (10.0.0.0/16).
const serviceIP = "10.0.0.1"

// publishEndpoint makes the kubernetes Service's EndpointSlice and Endpoints point at
// the front door, so that pods reach the API server through the Service.
func publishEndpoint(ctx context.Context, kubeconfig string, front *net.TCPAddr) error {
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	ip, port, name, protocol := front.IP.String(), int32(front.Port), "https", corev1.ProtocolTCP
	ready := true
	labels := map[string]string{
		discoveryv1.LabelServiceName: "kubernetes",
		discoveryv1.LabelManagedBy:   "spookd-test-apiserver",
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "kubernetes", Namespace: metav1.NamespaceDefault, Labels: labels},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &protocol}},
	}
	endpoints := &corev1.Endpoints{ //nolint:staticcheck // still read by older clients
		ObjectMeta: metav1.ObjectMeta{
			Name: "kubernetes", Namespace: metav1.NamespaceDefault,
			Labels: map[string]string{discoveryv1.LabelSkipMirror: "true"},
		},
		Subsets: []corev1.EndpointSubset{{ //nolint:staticcheck
			Addresses: []corev1.EndpointAddress{{IP: ip}},
			Ports:     []corev1.EndpointPort{{Name: name, Port: port, Protocol: protocol}},
		}},
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err = client.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).Create(ctx, slice, metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			_, err = client.CoreV1().Endpoints(metav1.NamespaceDefault).Create(ctx, endpoints, metav1.CreateOptions{})
			if err == nil || apierrors.IsAlreadyExists(err) {
				return nil
			}
		}
		// The default namespace is made by the API server shortly after it serves.
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}
