package auth

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/catalog"
)

// Denial reasons, the label of the secrets_denials_total metric and the
// detail of the denial's audit event.
const (
	DenyUnauthenticated = "unauthenticated"
	DenyNoPolicy        = "no_policy"
	DenyRole            = "role"
	DenyUnscopedOnly    = "unscoped_only"
	DenyScope           = "scope"
	DenyCategory        = "category"
	DenyStreamLimit     = "stream_limit"
	DenyConsumer        = "consumer"
)

// Denial is a refused call: the reason (one of the Deny constants), the key
// it concerns if any, and the message the caller gets.
type Denial struct {
	Reason  string
	Key     string
	Message string
}

func (d *Denial) Error() string { return d.Message }

// CategoryLookup returns the categories of the stored secrets among keys,
// in one lookup (a key not stored is absent).
type CategoryLookup func(ctx context.Context, keys []string) (map[string]string, error)

// BadRequestError is input the scope check refuses to judge, as a handler
// would refuse it: INVALID_ARGUMENT naming the field, not a denial (bad
// input is not a scope question). Its message never echoes the input.
type BadRequestError struct{ Field, Message string }

func (e *BadRequestError) Error() string { return e.Field + ": " + e.Message }

// MaxScopedKeys is the most distinct keys a scoped caller may name in one
// call: the largest any method takes (WatchChanges' key filter, which the
// API takes from here; BatchAccessSecrets takes 100). The
// scope check runs before a handler validates the request, and looks the
// keys' categories up: a request naming more (the 256 KiB message limit
// allows some 15,000) is refused before any lookup.
const MaxScopedKeys = 1000

// Authorize decides whether p may make this call. It returns a Denial for a
// refusal, or an error when the decision could not be made (the database).
//
// For a scoped caller every target key must be in scope. A key that is not
// stored is judged by the category it would be created in for a method that
// creates, by its catalog category for a catalog key (its empty slot is
// public), and otherwise as outside any category list: so a key outside the
// scope answers the same whether or not it exists. Assigning a category that
// differs from the key's current (or default) one needs authority over both.
func (pol Policy) Authorize(ctx context.Context, p Principal, req proto.Message, lookup CategoryLookup) (*Denial, error) {
	if !pol.Allows(p.Role) {
		msg := fmt.Sprintf("role %s may not call %s", p.Role, pol.Action)
		if len(pol.Roles) == 1 && pol.Roles[0] == RoleAdmin {
			msg += "; ensure you are authenticated as admin"
		}
		return &Denial{Reason: DenyRole, Message: msg}, nil
	}
	if p.Scope.Empty() {
		return nil, nil
	}
	if pol.Scope == pb.MethodPolicy_SCOPE_RULE_UNSCOPED_ONLY {
		return &Denial{Reason: DenyUnscopedOnly, Message: fmt.Sprintf("%s needs a token without a scope; %s is scoped", pol.Action, p.Name)}, nil
	}
	assigned, assigns := pol.AssignedCategory(req)
	if assigns {
		if n, err := catalog.NormalizeCategory(assigned); err == nil {
			assigned = n
		}
	}
	keys := distinct(pol.Keys(req))
	if len(keys) > MaxScopedKeys {
		return nil, &BadRequestError{Field: "keys", Message: fmt.Sprintf("%d distinct keys named; at most %d in one call", len(keys), MaxScopedKeys)}
	}
	for _, key := range keys {
		if !catalog.ValidKey(key) {
			// Not echoed: it has not been validated (up to the 256 KiB
			// message limit), and messages go to the log.
			return nil, &BadRequestError{Field: "key", Message: catalog.KeyRule + " (the key is not echoed)"}
		}
		if !p.Scope.AllowsKey(key) {
			return outsideScope(p, key), nil
		}
	}
	if !p.Scope.NeedsCategory() && !assigns {
		return nil, nil
	}
	// Every key's stored category in one lookup.
	stored, err := lookup(ctx, keys)
	if err != nil {
		return nil, err
	}
	for _, key := range keys {
		current, exists := stored[key]
		if !exists || current == "" {
			current, exists = DefaultCategory(key), false
		}
		judged := current
		if !exists && !pol.Creates {
			if _, inCatalog := catalog.Lookup(key); !inCatalog {
				judged = ""
			}
		}
		if !exists && pol.Creates && assigns {
			judged = assigned
		}
		if !p.Scope.Allows(key, judged) {
			return outsideScope(p, key), nil
		}
		if assigns && assigned != current {
			if !p.Scope.Governs(current) || !p.Scope.Governs(assigned) || !p.Scope.Allows(key, assigned) {
				return &Denial{Reason: DenyCategory, Key: key, Message: fmt.Sprintf("%s may not move %s from category %s to %s: that needs authority over both categories", p.Name, key, current, assigned)}, nil
			}
		}
	}
	return nil, nil
}

// outsideScope is the denial of a key outside p's scope: the same whether
// or not the key exists.
func outsideScope(p Principal, key string) *Denial {
	return &Denial{Reason: DenyScope, Key: key, Message: fmt.Sprintf("%s is outside the scope of %s (or does not exist)", key, p.Name)}
}

// distinct returns keys without repeats, in order.
func distinct(keys []string) []string {
	seen := make(map[string]bool, len(keys))
	out := keys[:0:0]
	for _, k := range keys {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}

// DefaultCategory is the category a key gets when it is created without one:
// the catalog's, else custom.
func DefaultCategory(key string) string {
	if e, ok := catalog.Lookup(key); ok {
		return e.Category
	}
	return catalog.CategoryCustom
}
