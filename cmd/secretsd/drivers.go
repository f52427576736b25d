package main

// The KMS drivers of SECRETS_KEK_URL (awskms://, gcpkms://, azurekeyvault://,
// hashivault://) are linked here, by importing the package that registers
// them; see README "Key-encryption keys". Leaving this import out saves
// ~16 MB of binary and leaves base64key:// and file:// only.
import _ "github.com/orient-bot/secrets/server/seal/kmsdrivers"
