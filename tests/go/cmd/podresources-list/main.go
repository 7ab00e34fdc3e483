// Command podresources-list is a tiny client of the kubelet's PodResources API
// v1 (k8s.io/kubelet/pkg/apis/podresources/v1, service v1.PodResourcesLister):
// it calls one method on a Unix socket and prints the response as one line of
// JSON (protojson with the proto's field names, unpopulated fields included):
//
//	podresources-list -socket /tmp/x/pod-resources.sock                  # List
//	podresources-list -socket ... -method allocatable                    # GetAllocatableResources
//	podresources-list -socket ... -method get -pod NAME -namespace NS    # Get
//
// Errors go to stderr with exit code 1 (the gRPC status code, e.g. Unknown for
// Get of an unknown pod, is part of the message).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

func main() {
	socket := flag.String("socket", "", "path of the PodResources Unix socket")
	method := flag.String("method", "list", "list | allocatable | get")
	podName := flag.String("pod", "", "pod name (for -method get)")
	namespace := flag.String("namespace", "default", "pod namespace (for -method get)")
	timeout := flag.Duration("timeout", 10*time.Second, "deadline of the call")
	flag.Parse()
	if *socket == "" {
		fmt.Fprintln(os.Stderr, "podresources-list: -socket is required")
		os.Exit(2)
	}

	conn, err := grpc.NewClient("unix://"+*socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "podresources-list:", err)
		os.Exit(1)
	}
	defer conn.Close()
	client := podresourcesv1.NewPodResourcesListerClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	var resp proto.Message
	switch *method {
	case "list":
		resp, err = client.List(ctx, &podresourcesv1.ListPodResourcesRequest{})
	case "allocatable":
		resp, err = client.GetAllocatableResources(ctx, &podresourcesv1.AllocatableResourcesRequest{})
	case "get":
		resp, err = client.Get(ctx, &podresourcesv1.GetPodResourcesRequest{PodName: *podName, PodNamespace: *namespace})
	default:
		fmt.Fprintf(os.Stderr, "podresources-list: unknown -method %q\n", *method)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "podresources-list:", err)
		os.Exit(1)
	}
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(resp)
	if err != nil {
		fmt.Fprintln(os.Stderr, "podresources-list:", err)
		os.Exit(1)
	}
	os.Stdout.Write(append(b, '\n'))
}
