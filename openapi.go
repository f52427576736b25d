// Package secrets is the root of Orient Secrets. It only embeds the generated
// OpenAPI document (go:embed cannot reach into gen/ from elsewhere); the
// service lives under server/, the client under client/.
package secrets

import _ "embed"

// OpenAPI is the generated OpenAPI (Swagger 2.0) document of the REST API.
//
//go:embed gen/openapi/secrets.swagger.json
var OpenAPI []byte
