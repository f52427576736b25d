package api

import (
	"slices"
	"strings"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

var secretDescriptor = (&pb.Secret{}).ProtoReflect().Descriptor()

// outputOnly reports whether a field mask path names a field of md (or a
// field inside one) that the proto marks OUTPUT_ONLY
// (google.api.field_behavior): the server sets it, a write ignores it.
func outputOnly(md protoreflect.MessageDescriptor, path string) bool {
	name, _, _ := strings.Cut(path, ".")
	fd := md.Fields().ByName(protoreflect.Name(name))
	if fd == nil {
		fd = md.Fields().ByJSONName(name)
	}
	if fd == nil {
		return false
	}
	behaviors, _ := proto.GetExtension(fd.Options(), annotations.E_FieldBehavior).([]annotations.FieldBehavior)
	return slices.Contains(behaviors, annotations.FieldBehavior_OUTPUT_ONLY)
}
