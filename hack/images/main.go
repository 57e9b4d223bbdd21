// Command images is `make images`: it builds the operator, the example
// agent and the node's pause image from static binaries, without a
// container engine, and writes them as image tarballs to bin/images/ (see
// cluster.BuildImages), where the local node imports them from.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/agentmesh/agentmesh/test/cluster"
)

func main() {
	root, err := cluster.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
	out := flag.String("out", cluster.ImagesDir(root), "directory for the image tarballs")
	flag.Parse()
	if err := cluster.BuildImages(root, *out); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
	tag, _ := cluster.ImageTag(root)
	for _, img := range cluster.Images {
		fmt.Printf("%s\t%s/%s\n", img.Ref(tag), *out, img.File())
	}
}
