// Package secrets is the root of Orient Secrets. It only embeds generated
// files (go:embed cannot reach into gen/ from elsewhere); the service lives
// under server/, the client under client/.
package secrets

import _ "embed"

// OpenAPI is the OpenAPI 3 document of the REST API, generated from the
// proto by make generate (gnostic's protoc-gen-openapi, finished by
// internal/openapigen).
//
//go:embed gen/openapi/openapi.json
var OpenAPI []byte

// Descriptors is the API's FileDescriptorSet with source info (comments),
// built by make generate (buf build), for gRPC reflection.
//
//go:embed gen/descriptors.binpb
var Descriptors []byte
