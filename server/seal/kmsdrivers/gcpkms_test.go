package kmsdrivers_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	kms "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	"gocloud.dev/secrets"
	"gocloud.dev/secrets/gcpkms"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/orient-bot/secrets/server/app"
)

const gcpKeyRing = "projects/orient-test/locations/global/keyRings/secrets/cryptoKeys/"

// gcpFake is an in-test Cloud KMS: the KeyManagementService's Encrypt and
// Decrypt over gRPC, reached by the real client library
// (cloud.google.com/go/kms) through gocloud's gcpkms driver. Only the
// credentials and endpoint differ from production (no Google account here).
type gcpFake struct {
	kmspb.UnimplementedKeyManagementServiceServer
	box  *keyBox
	addr string
	mu   sync.Mutex
	srv  *grpc.Server
	mux  *secrets.URLMux
}

func newGCPFake(t *testing.T) *gcpFake {
	f := &gcpFake{box: newKeyBox(gcpKeyRing + "kek")}
	f.addr = "127.0.0.1:0"
	f.start(t)
	client, err := kms.NewKeyManagementClient(context.Background(), option.WithEndpoint(f.addr), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
		// Reconnect soon after the stand-in restarts (grpc's default backoff
		// grows to minutes; production keeps it).
		option.WithGRPCDialOption(grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{
			BaseDelay: 50 * time.Millisecond, Multiplier: 1.2, MaxDelay: 200 * time.Millisecond}})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); f.stop(t) })
	f.mux = new(secrets.URLMux)
	f.mux.RegisterKeeper(gcpkms.Scheme, &gcpkms.URLOpener{Client: client})
	return f
}

func (f *gcpFake) kekURL() string     { return "gcpkms://" + gcpKeyRing + "kek" }
func (f *gcpFake) missingURL() string { return "gcpkms://" + gcpKeyRing + "missing" }
func (f *gcpFake) keyName() string    { return "keyRings/secrets" }
func (f *gcpFake) configure(cfg *app.Config) {
	cfg.KEKMux = f.mux
}

func (f *gcpFake) refuse(_ *testing.T, on bool) { f.box.setRefused(gcpKeyRing+"kek", on) }

func (f *gcpFake) start(t *testing.T) {
	l := listenAt(t, f.addr)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addr = l.Addr().String()
	f.srv = grpc.NewServer()
	kmspb.RegisterKeyManagementServiceServer(f.srv, f)
	go f.srv.Serve(l)
}

func (f *gcpFake) stop(*testing.T) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.srv != nil {
		f.srv.Stop()
		f.srv = nil
	}
}

// gcpStatus answers as Cloud KMS does, quoting the resource name.
func gcpStatus(name string, err error) error {
	switch {
	case errors.Is(err, errNoKey):
		return status.Errorf(codes.NotFound, "CryptoKey %s not found.", name)
	case errors.Is(err, errRefused):
		return status.Errorf(codes.PermissionDenied, "Permission 'cloudkms.cryptoKeyVersions.useToEncrypt' denied on resource '%s' (or it may not exist).", name)
	case errors.Is(err, errBadCT):
		return status.Error(codes.InvalidArgument, "Decryption failed: the ciphertext is invalid.")
	}
	return status.Error(codes.Internal, err.Error())
}

func (f *gcpFake) Encrypt(_ context.Context, req *kmspb.EncryptRequest) (*kmspb.EncryptResponse, error) {
	ct, err := f.box.encrypt(req.Name, req.Plaintext)
	if err != nil {
		return nil, gcpStatus(req.Name, err)
	}
	return &kmspb.EncryptResponse{Name: req.Name + "/cryptoKeyVersions/1", Ciphertext: ct}, nil
}

func (f *gcpFake) Decrypt(_ context.Context, req *kmspb.DecryptRequest) (*kmspb.DecryptResponse, error) {
	pt, err := f.box.decrypt(req.Name, req.Ciphertext)
	if err != nil {
		return nil, gcpStatus(req.Name, err)
	}
	return &kmspb.DecryptResponse{Plaintext: pt}, nil
}
