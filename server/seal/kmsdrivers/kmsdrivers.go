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

	"github.com/aws/smithy-go"
	vault "github.com/hashicorp/vault/api"
	"gocloud.dev/gcerrors"
	"gocloud.dev/secrets/awskms"          // awskms://    AWS KMS (aws-sdk-go-v2)
	_ "gocloud.dev/secrets/azurekeyvault" // azurekeyvault://  Azure Key Vault (azkeys)
	_ "gocloud.dev/secrets/gcpkms"        // gcpkms://    Google Cloud KMS (cloud.google.com/go/kms)
	"gocloud.dev/secrets/hashivault"      // hashivault://  Vault / OpenBao transit (vault/api)

	"github.com/orient-bot/secrets/server/seal"
)

func init() {
	seal.RegisterErrorCode(hashivault.Scheme, VaultErrorCode)
	seal.RegisterErrorCode(awskms.Scheme, AWSErrorCode)
}

// AWSErrorCode classifies the AWS KMS errors gocloud's awskms driver leaves
// Unknown: access denied and rejected credentials are refusals (an operator
// must fix IAM), not an outage; a ciphertext wrapped by another key is
// corrupt for this KEK.
func AWSErrorCode(err error) gcerrors.ErrorCode {
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return gcerrors.Unknown
	}
	switch ae.ErrorCode() {
	case "AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException",
		"InvalidClientTokenId", "IncompleteSignature":
		return gcerrors.PermissionDenied
	case "IncorrectKeyException":
		return gcerrors.InvalidArgument
	}
	return gcerrors.Unknown
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
