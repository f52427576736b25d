package auth

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"

	"github.com/orient-bot/secrets/server/catalog"
)

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
		role, err := ParseRole(string(id.Role))
		if err != nil {
			return nil, fmt.Errorf("%s: entry %d: role %w", file, i, err)
		}
		ids[i].Role = role // "Admin" is admin: policies compare the lower-case name
		for j, c := range id.Scope.Categories {
			n, err := catalog.NormalizeCategory(c) // as CreateToken does
			if err != nil {
				return nil, fmt.Errorf("%s: entry %d: category %q: %w", file, i, c, err)
			}
			ids[i].Scope.Categories[j] = n
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
