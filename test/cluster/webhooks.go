package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// InstallWebhooks installs config/webhook/manifests.yaml with every
// webhook's clientConfig turned into a URL on 127.0.0.1:port (the path of
// its service reference) and an empty caBundle, which the operator fills:
// the way the local control plane calls a webhook served by a local
// operator process.
func (c *Cluster) InstallWebhooks(ctx context.Context, port int) error {
	b, err := os.ReadFile(filepath.Join(c.Root, "config", "webhook", "manifests.yaml"))
	if err != nil {
		return err
	}
	cl, err := client.New(c.Config, client.Options{})
	if err != nil {
		return err
	}
	url := func(cc *admissionregistrationv1.WebhookClientConfig) {
		path := "/"
		if cc.Service != nil && cc.Service.Path != nil {
			path = *cc.Service.Path
		}
		u := fmt.Sprintf("https://127.0.0.1:%d%s", port, path)
		cc.URL, cc.Service, cc.CABundle = &u, nil, nil
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	for {
		var raw map[string]any
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		doc, err := yaml.Marshal(raw)
		if err != nil {
			return err
		}
		var obj client.Object
		switch raw["kind"] {
		case "MutatingWebhookConfiguration":
			m := &admissionregistrationv1.MutatingWebhookConfiguration{}
			if err := yaml.Unmarshal(doc, m); err != nil {
				return err
			}
			for i := range m.Webhooks {
				url(&m.Webhooks[i].ClientConfig)
			}
			obj = m
		case "ValidatingWebhookConfiguration":
			v := &admissionregistrationv1.ValidatingWebhookConfiguration{}
			if err := yaml.Unmarshal(doc, v); err != nil {
				return err
			}
			for i := range v.Webhooks {
				url(&v.Webhooks[i].ClientConfig)
			}
			obj = v
		default:
			continue
		}
		if err := cl.Create(ctx, obj); err != nil {
			return fmt.Errorf("cluster: installing %s %s: %w", raw["kind"], obj.GetName(), err)
		}
	}
}
