package cluster

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"sigs.k8s.io/yaml"
)

// Image is a container image that the project builds from one static
// binary, without a container engine.
type Image struct {
	// Repository is the image's name without the tag.
	Repository string
	// Package is the Go package of the binary, relative to the repository.
	Package string
	// Path is where the binary lies in the image; it is the entrypoint.
	Path string
	// User is the image's numeric user:group.
	User string
}

// The images of the local node. The operator's matches the Dockerfile: the
// static manager binary at /manager, run as 65532:65532 (distroless's
// "nonroot"), with distroless's /etc/passwd, /etc/group, /home/nonroot and
// /tmp. The pause image is the node's sandbox image, pinned in containerd's
// configuration.
var (
	OperatorImage = Image{Repository: "ghcr.io/agentmesh/agentmesh", Package: "./cmd/manager", Path: "/manager", User: "65532:65532"}
	AgentImage    = Image{Repository: "ghcr.io/agentmesh/example-agent", Package: "./examples/agent", Path: "/agent", User: "65532:65532"}
	PauseImage    = Image{Repository: "localhost/agentmesh/pause", Package: "./hack/images/pause", Path: "/pause", User: "65535:65535"}
	// Images are all of them, in the order BuildImages writes them.
	Images = []Image{OperatorImage, AgentImage, PauseImage}
)

// ImageTag is the tag of every image built here: the chart's appVersion,
// so the chart's default image is the one the local node has.
func ImageTag(root string) (string, error) {
	b, err := os.ReadFile(filepath.Join(root, "charts", "agentmesh", "Chart.yaml"))
	if err != nil {
		return "", err
	}
	var chart struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(b, &chart); err != nil {
		return "", fmt.Errorf("cluster: charts/agentmesh/Chart.yaml: %w", err)
	}
	if chart.AppVersion == "" {
		return "", errors.New("cluster: no appVersion in charts/agentmesh/Chart.yaml")
	}
	return chart.AppVersion, nil
}

// Ref is the image's reference at tag.
func (i Image) Ref(tag string) string { return i.Repository + ":" + tag }

// File is the image tarball's name in the images directory.
func (i Image) File() string { return filepath.Base(i.Repository) + ".tar" }

// ImagesDir is where BuildImages writes the tarballs: <root>/bin/images.
func ImagesDir(root string) string { return filepath.Join(root, "bin", "images") }

// BuildImages builds every image's binary (static, for this machine's
// architecture) and writes each image as a tarball in the `docker save`
// layout (OCI manifest and config, one gzip layer) to dir, which
// `ctr images import`, `docker load` and `podman load` all read. The layer's
// file times are fixed, so an unchanged binary gives the same image digest.
func BuildImages(root, dir string) error {
	tag, err := ImageTag(root)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "agentmesh-images-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(work) }()
	for _, img := range Images {
		bin := filepath.Join(work, filepath.Base(img.Path))
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, img.Package)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("cluster: building %s: %w\n%s", img.Package, err, out)
		}
		if err := writeImage(img, tag, bin, filepath.Join(dir, img.File())); err != nil {
			return fmt.Errorf("cluster: image %s: %w", img.Ref(tag), err)
		}
	}
	return nil
}

func writeImage(img Image, tag, bin, out string) error {
	layerTar, err := rootfs(img, bin)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.BestSpeed))
	if err != nil {
		return err
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	image, err := mutate.AppendLayers(base, layer)
	if err != nil {
		return err
	}
	cf, err := image.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config = v1.Config{
		Entrypoint: []string{img.Path},
		User:       img.User,
		WorkingDir: "/",
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	}
	if image, err = mutate.ConfigFile(image, cf); err != nil {
		return err
	}
	ref, err := name.NewTag(img.Ref(tag))
	if err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, image); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// rootfs is the image's only layer: the binary at its path and, for a
// non-root user, the files distroless's nonroot images carry.
func rootfs(img Image, bin string) ([]byte, error) {
	binary, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	uid, gid, _ := strings.Cut(img.User, ":")
	entries := []struct {
		name  string
		mode  int64
		body  string
		dir   bool
		owner string
	}{
		{name: "etc/", mode: 0o755, dir: true},
		{name: "etc/passwd", mode: 0o644, body: "root:x:0:0:root:/root:/sbin/nologin\n" +
			"nonroot:x:" + uid + ":" + gid + ":nonroot:/home/nonroot:/sbin/nologin\n"},
		{name: "etc/group", mode: 0o644, body: "root:x:0:\nnonroot:x:" + gid + ":\n"},
		{name: "home/", mode: 0o755, dir: true},
		{name: "home/nonroot/", mode: 0o700, dir: true, owner: img.User},
		{name: "tmp/", mode: 0o1777, dir: true},
	}
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, Format: tar.FormatPAX}
		if e.owner != "" {
			if _, err := fmt.Sscanf(e.owner, "%d:%d", &h.Uid, &h.Gid); err != nil {
				return nil, err
			}
		}
		if e.dir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(img.Path, "/"), Mode: 0o755, Typeflag: tar.TypeReg,
		Size: int64(len(binary)), Format: tar.FormatPAX}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(binary); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
