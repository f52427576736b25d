package seal

import (
	"encoding/base64"
	"net/url"

	"gocloud.dev/secrets/localsecrets"
)

// fileScheme names a KEK held in a local file: file:///abs/path/to/key.
// It is for self-hosted installs without a KMS. The file holds a
// base64-encoded 32-byte key (`openssl rand -base64 32`), must not be
// accessible by group or others, and is read once, when the keyring opens:
// changing or removing it later changes nothing until a restart.
//
// Its fingerprint is that of the key, not of the path (the same key as a
// base64key:// URL has the same id), so moving the file keeps every row
// readable.
const fileScheme = "file"

// readFile fills a file:// spec with the key read from its file. Errors
// name the entry, never the path or the content.
func (spec *kekSpec) readFile(u *url.URL) error {
	switch {
	case u.Host != "" && u.Host != "localhost":
		return invalidKEKURL(spec.index, "file:// KEK URL must be file:///absolute/path (no host)")
	case u.Path == "" || u.Path[0] != '/':
		return invalidKEKURL(spec.index, "file:// KEK URL must name an absolute path: file:///absolute/path")
	case u.User != nil, u.RawQuery != "", u.ForceQuery, u.Fragment != "":
		return invalidKEKURL(spec.index, "file:// KEK URL takes no user info, query or fragment")
	}
	key, err := readKeyFile(u.Path)
	if err != nil {
		return invalidKEKURL(spec.index, "file:// KEK: %v", err)
	}
	defer clear(key)
	spec.local = true
	copy(spec.localKey[:], key)
	spec.normalized = localsecrets.Scheme + "://" + base64.URLEncoding.EncodeToString(key)
	return nil
}
