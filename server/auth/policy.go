package auth

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
)

// Rule says who may call an RPC.
type Rule struct {
	// Public RPCs need no credentials (health, reflection).
	Public bool
	// Roles that may call it.
	Roles []Role
	// KeyScoped RPCs name keys in their request; a scoped principal may only
	// name keys in its scope. List and watch RPCs filter instead.
	KeyScoped bool
}

var (
	anyone   = []Role{RoleAdmin, RoleWriter, RoleReader, RoleAuditor}
	readers  = []Role{RoleAdmin, RoleWriter, RoleReader}
	writers  = []Role{RoleAdmin, RoleWriter}
	admins   = []Role{RoleAdmin}
	auditors = []Role{RoleAdmin, RoleAuditor}
)

// Rules is the policy of every RPC the server serves, by full method name.
// An RPC missing here is refused (and the policy test fails).
var Rules = map[string]Rule{
	"/orient.secrets.v1.SecretService/ListSecrets":          {Roles: readers},
	"/orient.secrets.v1.SecretService/GetSecret":            {Roles: readers, KeyScoped: true},
	"/orient.secrets.v1.SecretService/PutSecret":            {Roles: writers, KeyScoped: true},
	"/orient.secrets.v1.SecretService/UpdateSecret":         {Roles: writers, KeyScoped: true},
	"/orient.secrets.v1.SecretService/AccessSecretVersion":  {Roles: readers, KeyScoped: true},
	"/orient.secrets.v1.SecretService/BatchAccessSecrets":   {Roles: readers, KeyScoped: true},
	"/orient.secrets.v1.SecretService/ListSecretVersions":   {Roles: readers, KeyScoped: true},
	"/orient.secrets.v1.SecretService/DisableSecretVersion": {Roles: writers, KeyScoped: true},
	"/orient.secrets.v1.SecretService/EnableSecretVersion":  {Roles: writers, KeyScoped: true},
	"/orient.secrets.v1.SecretService/DestroySecretVersion": {Roles: writers, KeyScoped: true},
	"/orient.secrets.v1.SecretService/DeleteSecret":         {Roles: writers, KeyScoped: true},
	"/orient.secrets.v1.SecretService/WatchChanges":         {Roles: readers, KeyScoped: true},
	"/orient.secrets.v1.SecretService/ListConsumers":        {Roles: readers},
	"/orient.secrets.v1.SecretService/ReportConsumerState":  {Roles: readers, KeyScoped: true},

	"/orient.secrets.v1.ProviderService/ListProviders":         {Roles: anyone},
	"/orient.secrets.v1.ProviderService/GetProviderDefaults":   {Roles: anyone},
	"/orient.secrets.v1.ProviderService/UpdateProviderDefault": {Roles: admins},

	"/orient.secrets.v1.AuditService/ListAuditEvents": {Roles: auditors},
	"/orient.secrets.v1.AuditService/VerifyAuditLog":  {Roles: auditors},
	"/orient.secrets.v1.AuditService/MatchValue":      {Roles: auditors},

	"/orient.secrets.v1.TokenService/CreateToken": {Roles: admins},
	"/orient.secrets.v1.TokenService/ListTokens":  {Roles: admins},
	"/orient.secrets.v1.TokenService/RevokeToken": {Roles: admins},

	"/orient.secrets.v1.KeyService/RotateKEK":    {Roles: admins},
	"/orient.secrets.v1.KeyService/GetKEKStatus": {Roles: admins},

	"/grpc.health.v1.Health/Check":                                   {Public: true},
	"/grpc.health.v1.Health/Watch":                                   {Public: true},
	"/grpc.health.v1.Health/List":                                    {Public: true},
	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":      {Public: true},
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": {Public: true},
}

// Allows reports whether role may call the RPC.
func (r Rule) Allows(role Role) bool { return slices.Contains(r.Roles, role) }

// CertIdentity maps a client certificate (by its subject common name or a
// DNS, URI or email SAN) to a principal, for service-to-service calls over mutual TLS
// without bearer tokens.
type CertIdentity struct {
	// Subject is the certificate's CN or one of its DNS, URI or email SANs.
	Subject string `json:"subject"`
	// Name is the actor recorded in the audit log (default: "cert:"+Subject).
	Name  string `json:"name,omitempty"`
	Role  Role   `json:"role"`
	Scope Scope  `json:"scope,omitempty"`
}

// LoadCertIdentities reads a JSON array of CertIdentity.
func LoadCertIdentities(file string) ([]CertIdentity, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	// Strict: a misspelt field ("keyPatterns") must not silently yield an
	// unscoped identity.
	var ids []CertIdentity
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ids); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%s: data after the JSON array", file)
	}
	for i, id := range ids {
		if id.Subject == "" {
			return nil, fmt.Errorf("%s: entry %d: subject is required", file, i)
		}
		if _, err := ParseRole(string(id.Role)); err != nil {
			return nil, fmt.Errorf("%s: entry %d: role %w", file, i, err)
		}
		for _, p := range id.Scope.KeyPatterns {
			if !ValidPattern(p) {
				return nil, fmt.Errorf("%s: entry %d: bad key pattern %q", file, i, p)
			}
		}
		if id.Name == "" {
			ids[i].Name = "cert:" + id.Subject
		}
	}
	return ids, nil
}
