// Package kmsdrivers links the KMS drivers of key-encryption keys: importing
// it registers awskms://, gcpkms://, azurekeyvault:// and hashivault:// with
// gocloud.dev's URL mux, through which seal opens SECRETS_KEK_URL
// (base64key:// and file:// are built into seal), and teaches seal to
// classify Vault's errors. secretsd imports it for its side effects; seal
// itself does not, so that its users and tests do not carry the SDKs.
// README's "Key-encryption keys" section documents each driver: URL form,
// credentials, permissions, and behaviour when the KMS is unreachable or
// refuses the key.
package kmsdrivers

import (
	"errors"
	"net/http"
	"strings"

	vault "github.com/hashicorp/vault/api"
	"gocloud.dev/gcerrors"
	_ "gocloud.dev/secrets/awskms"        // awskms://    AWS KMS (aws-sdk-go-v2)
	_ "gocloud.dev/secrets/azurekeyvault" // azurekeyvault://  Azure Key Vault (azkeys)
	_ "gocloud.dev/secrets/gcpkms"        // gcpkms://    Google Cloud KMS (cloud.google.com/go/kms)
	"gocloud.dev/secrets/hashivault"      // hashivault://  Vault / OpenBao transit (vault/api)

	"github.com/orient-bot/secrets/server/seal"
)

func init() {
	seal.RegisterErrorCode(hashivault.Scheme, VaultErrorCode)
}

// VaultErrorCode classifies Vault's HTTP answers, which gocloud's hashivault
// driver reports as Unknown (= KMS unavailable): a refused key (403, or the
// transit key missing) is then reported as refused, and a ciphertext the
// transit engine rejects as corrupt. Anything else (connection refused,
// 5xx, a sealed Vault) stays Unknown, i.e. unavailable and retryable.
func VaultErrorCode(err error) gcerrors.ErrorCode {
	var re *vault.ResponseError
	if !errors.As(err, &re) {
		return gcerrors.Unknown
	}
	msg := strings.ToLower(strings.Join(re.Errors, " "))
	switch {
	case re.StatusCode == http.StatusForbidden:
		return gcerrors.PermissionDenied
	case re.StatusCode == http.StatusNotFound, strings.Contains(msg, "key not found"):
		return gcerrors.NotFound
	case re.StatusCode == http.StatusTooManyRequests:
		return gcerrors.ResourceExhausted
	case re.StatusCode == http.StatusBadRequest:
		return gcerrors.InvalidArgument
	}
	return gcerrors.Unknown
}
