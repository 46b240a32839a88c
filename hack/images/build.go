/*
Copyright 2026 The telemetry-operator Authors.

Licensed under the Apache License, Version 2.0.
*/

package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// NonRoot is the user and group the images run as (distroless's nonroot).
const NonRoot = 65532

// epoch dates every file and the image itself, so the same binary gives the same digest.
var epoch = time.Unix(0, 0).UTC()

// BuildOptions says what to put in an image and where to write it.
type BuildOptions struct {
	Binary, Entrypoint, Ref, CACertificates, Out string
}

// Build writes an OCI archive holding one image and returns its digest and size (the layer and
// config as stored).
func Build(o BuildOptions) (v1.Hash, int64, error) {
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return v1.Hash{}, 0, err
	}
	cas, err := os.ReadFile(o.CACertificates)
	if err != nil {
		return v1.Hash{}, 0, fmt.Errorf("CA certificates (install Debian's ca-certificates): %w", err)
	}
	fsTar, err := rootFS(strings.TrimPrefix(o.Entrypoint, "/"), bin, cas)
	if err != nil {
		return v1.Hash{}, 0, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(fsTar)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return v1.Hash{}, 0, err
	}
	img, err := mutate.AppendLayers(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON), layer)
	if err != nil {
		return v1.Hash{}, 0, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return v1.Hash{}, 0, err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS = "amd64", "linux"
	cfg.Config.User = fmt.Sprintf("%d:%d", NonRoot, NonRoot)
	cfg.Config.Entrypoint = []string{o.Entrypoint}
	cfg.Config.WorkingDir = "/"
	cfg.Config.Env = []string{"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}
	cfg.Config.Labels = map[string]string{
		"org.opencontainers.image.title":  strings.Split(o.Ref, ":")[0],
		"org.opencontainers.image.source": "https://github.com/sourcegraph/telemetry-operator",
	}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return v1.Hash{}, 0, err
	}
	if img, err = mutate.CreatedAt(img, v1.Time{Time: epoch}); err != nil {
		return v1.Hash{}, 0, err
	}
	digest, err := img.Digest()
	if err != nil {
		return v1.Hash{}, 0, err
	}
	size, err := storedSize(img)
	if err != nil {
		return v1.Hash{}, 0, err
	}
	dir, err := os.MkdirTemp("", "oci-layout-")
	if err != nil {
		return v1.Hash{}, 0, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return v1.Hash{}, 0, err
	}
	repo, tag, _ := strings.Cut(o.Ref, ":")
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		// The tag, as the OCI image layout names it, and the full name containerd imports it as
		// (what a kubelet asks for when a manifest says repo:tag).
		"org.opencontainers.image.ref.name": tag,
		"io.containerd.image.name":          "docker.io/library/" + repo + ":" + tag,
	})); err != nil {
		return v1.Hash{}, 0, err
	}
	return digest, size, tarDir(dir, o.Out)
}

// rootFS is the image's only layer.
func rootFS(name string, bin, cas []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(path string, mode int64, uid int) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: path + "/", Mode: mode, Uid: uid, Gid: uid, ModTime: epoch, Format: tar.FormatPAX})
	}
	file := func(path string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: path, Mode: mode, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", NonRoot, NonRoot)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", NonRoot)
	err := errors.Join(
		dir("etc", 0o755, 0), file("etc/passwd", 0o644, []byte(passwd)), file("etc/group", 0o644, []byte(group)),
		dir("etc/ssl", 0o755, 0), dir("etc/ssl/certs", 0o755, 0), file("etc/ssl/certs/ca-certificates.crt", 0o644, cas),
		dir("home", 0o755, 0), dir("home/nonroot", 0o700, NonRoot),
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777, ModTime: epoch, Format: tar.FormatPAX}),
		file(name, 0o755, bin),
		tw.Close(),
	)
	return buf.Bytes(), err
}

func storedSize(img v1.Image) (int64, error) {
	m, err := img.Manifest()
	if err != nil {
		return 0, err
	}
	n := m.Config.Size
	for _, l := range m.Layers {
		n += l.Size
	}
	return n, nil
}

// tarDir writes the files under dir into a tar file at out, in a fixed order.
func tarDir(dir, out string) error {
	var paths []string
	if err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			paths = append(paths, p)
		}
		return err
	}); err != nil {
		return err
	}
	slices.Sort(paths)
	f, err := os.Create(out) //nolint:gosec // the caller's output path
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	for _, p := range paths {
		data, err := os.ReadFile(p) //nolint:gosec // walked above
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if err := tw.WriteHeader(&tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	return errors.Join(tw.Close(), f.Close())
}
