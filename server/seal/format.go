package seal

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
)

// Ciphertext format, version 1:
//
//	byte 0       format version (0x01)
//	bytes 1..12  random 96-bit GCM nonce
//	bytes 13..   AES-256-GCM output (ciphertext || 16-byte tag) of
//	             crc32c(value) as 4 bytes big-endian || value
//
// The AAD (see aad) binds the ciphertext to the secret key and version.
// Every DEK encrypts exactly one message, so a random nonce can never repeat
// under the same key.
const (
	formatV1   byte = 0x01
	nonceSize       = 12
	tagSize         = 16
	crcSize         = 4
	headerSize      = 1 + nonceSize
	// minCiphertextLen is the shortest well-formed v1 ciphertext: header,
	// the sealed CRC of an empty value, and the tag.
	minCiphertextLen = headerSize + crcSize + tagSize
	dekSize          = 32 // AES-256

	// aadLabelV1 is tied to format version 1; a future format gets its own.
	aadLabelV1 = "orient.secrets.v1"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checksum returns the CRC32C (Castagnoli) of b, as returned by Seal and Open.
func checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// aad returns the associated data for a value of the secret `key` at
// `version`: "orient.secrets.v1" || 0x00 || uint16 BE len(key) || key ||
// uint64 BE version. The length prefix makes it unambiguous.
func aad(key string, version int64) ([]byte, error) {
	if len(key) > math.MaxUint16 {
		return nil, fmt.Errorf("seal: secret key is %d bytes, at most %d supported", len(key), math.MaxUint16)
	}
	b := make([]byte, 0, len(aadLabelV1)+1+2+len(key)+8)
	b = append(b, aadLabelV1...)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(key)))
	b = append(b, key...)
	b = binary.BigEndian.AppendUint64(b, uint64(version))
	return b, nil
}

// decodeCiphertext splits a stored ciphertext into nonce and GCM output. It
// never panics; anything but a well-formed v1 ciphertext is ErrCorrupt. The
// returned slices alias b.
func decodeCiphertext(b []byte) (nonce, sealed []byte, err error) {
	if len(b) == 0 {
		return nil, nil, fmt.Errorf("%w: empty ciphertext", ErrCorrupt)
	}
	if b[0] != formatV1 {
		return nil, nil, fmt.Errorf("%w: unknown ciphertext format version %d", ErrCorrupt, b[0])
	}
	if len(b) < minCiphertextLen {
		return nil, nil, fmt.Errorf("%w: ciphertext too short (%d bytes)", ErrCorrupt, len(b))
	}
	return b[1:headerSize], b[headerSize:], nil
}
