package app

import (
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/reflection"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	// Error details are served by reflection, so grpcurl and buf curl
	// can decode the ErrorInfo and BadRequest of every error.
	_ "google.golang.org/genproto/googleapis/rpc/errdetails"

	secrets "github.com/orient-bot/secrets"
)

// registerReflection serves gRPC reflection (v1 and v1alpha) from the
// descriptors make generate builds with their source info, so grpcurl
// describe and buf curl show the proto's comments; other files (error
// details, health, reflection itself) come from the linked-in registry.
func registerReflection(g *grpc.Server) error {
	files, err := documentedFiles()
	if err != nil {
		return err
	}
	opts := reflection.ServerOptions{
		Services:           g,
		DescriptorResolver: layeredResolver{files, protoregistry.GlobalFiles},
		ExtensionResolver:  protoregistry.GlobalTypes,
	}
	reflectionv1.RegisterServerReflectionServer(g, reflection.NewServerV1(opts))
	reflectionv1alpha.RegisterServerReflectionServer(g, reflection.NewServer(opts))
	return nil
}

// documentedFiles are the API's files with source info (comments).
func documentedFiles() (*protoregistry.Files, error) {
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(secrets.Descriptors, &set); err != nil {
		return nil, fmt.Errorf("embedded descriptors: %w", err)
	}
	files, err := protodesc.NewFiles(&set)
	if err != nil {
		return nil, fmt.Errorf("embedded descriptors: %w", err)
	}
	return files, nil
}

type resolver interface {
	FindFileByPath(string) (protoreflect.FileDescriptor, error)
	FindDescriptorByName(protoreflect.FullName) (protoreflect.Descriptor, error)
}

// layeredResolver asks each resolver in turn.
type layeredResolver []resolver

func (l layeredResolver) FindFileByPath(path string) (protoreflect.FileDescriptor, error) {
	for _, r := range l {
		if fd, err := r.FindFileByPath(path); err == nil {
			return fd, nil
		}
	}
	return nil, fmt.Errorf("%s: %w", path, protoregistry.NotFound)
}

func (l layeredResolver) FindDescriptorByName(name protoreflect.FullName) (protoreflect.Descriptor, error) {
	for _, r := range l {
		if d, err := r.FindDescriptorByName(name); err == nil {
			return d, nil
		} else if !errors.Is(err, protoregistry.NotFound) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%s: %w", name, protoregistry.NotFound)
}
