// helmrender renders a Helm chart's templates the way `helm template` does, for the subset of Helm that
// helm/xtrain uses: there is no helm binary on the project's machines (README: Deploying on Kubernetes).
//
// It is stricter than Helm on purpose: a template that names an unknown function fails to parse, a
// missing value key fails (missingkey=error, where Helm prints nothing), and every rendered document must
// parse as YAML. Helm's own functions implemented here: include, tpl, required, toYaml, fromYaml, plus
// .Files.Get; sprig supplies the rest (without env and expandenv, which Helm removes too).
//
// Usage: helmrender [-f values.yaml]... [--name RELEASE] [--namespace NS] CHART_DIR
// Prints the documents to stdout, each after "# Source: <chart>/templates/<file>"; errors go to stderr
// with exit status 1.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

// valueFiles collects repeated -f flags in order; later files override earlier ones.
type valueFiles []string

func (v *valueFiles) String() string     { return strings.Join(*v, ",") }
func (v *valueFiles) Set(s string) error { *v = append(*v, s); return nil }

// Files is .Files: the chart's files by path relative to the chart's folder (symlinks followed).
type Files struct{ root string }

// Get returns a file's text, or an error (Helm returns "" for a missing file; we fail instead).
func (f Files) Get(name string) (string, error) {
	data, err := os.ReadFile(filepath.Join(f.root, filepath.FromSlash(name)))
	if err != nil {
		return "", fmt.Errorf(".Files.Get %q: %v", name, err)
	}
	return string(data), nil
}

// readYAMLMap reads a YAML mapping; an empty file is an empty mapping.
func readYAMLMap(path string) (map[string]interface{}, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return out, nil
}

// merge copies src over dst: mappings merge key by key, anything else replaces (Helm's coalescing).
func merge(dst, src map[string]interface{}) {
	for k, v := range src {
		if sm, ok := v.(map[string]interface{}); ok {
			if dm, ok := dst[k].(map[string]interface{}); ok {
				merge(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
}

// toYAML is Helm's toYaml: sorted keys, two-space indents, no trailing newline.
func toYAML(v interface{}) (string, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return "", err
	}
	return strings.TrimSuffix(buf.String(), "\n"), nil
}

func fromYAML(s string) (map[string]interface{}, error) {
	out := map[string]interface{}{}
	err := yaml.Unmarshal([]byte(s), &out)
	return out, err
}

// required is Helm's: fails rendering with msg when the value is nil or the empty string.
func required(msg string, v interface{}) (interface{}, error) {
	if v == nil {
		return nil, errors.New(msg)
	}
	if s, ok := v.(string); ok && s == "" {
		return nil, errors.New(msg)
	}
	return v, nil
}

// render parses the chart's templates (all .yaml and .tpl under templates/, one namespace as in Helm)
// and executes each file whose name does not start with "_".
func render(chartDir string, values []string, release, namespace string) (string, error) {
	chart, err := readYAMLMap(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return "", err
	}
	chartName, _ := chart["name"].(string)
	if chartName == "" {
		return "", errors.New("Chart.yaml has no name")
	}
	vals, err := readYAMLMap(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return "", err
	}
	for _, path := range values {
		override, err := readYAMLMap(path)
		if err != nil {
			return "", err
		}
		merge(vals, override)
	}
	top := map[string]interface{}{
		"Values": vals,
		"Release": map[string]interface{}{
			"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": true, "IsUpgrade": false,
			"Revision": 1,
		},
		"Chart": map[string]interface{}{
			"Name": chartName, "Version": chart["version"], "AppVersion": chart["appVersion"],
		},
		"Files": Files{root: chartDir},
	}

	var root *template.Template
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = fromYAML
	funcs["required"] = required
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	root = template.New(chartName).Funcs(funcs).Option("missingkey=error")

	dir := filepath.Join(chartDir, "templates")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var names []string
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || !(strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".tpl")) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			return "", err
		}
		name := chartName + "/templates/" + n
		if _, err := root.New(name).Parse(string(data)); err != nil {
			return "", err
		}
		names = append(names, name)
	}
	sort.Strings(names)

	var out strings.Builder
	for _, name := range names {
		if strings.HasPrefix(filepath.Base(name), "_") {
			continue
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, top); err != nil {
			return "", err
		}
		// A file may hold several documents; each must be YAML, and empty ones are dropped (as Helm does).
		for _, doc := range strings.Split(buf.String(), "\n---") {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			var parsed interface{}
			if err := yaml.Unmarshal([]byte(doc), &parsed); err != nil {
				return "", fmt.Errorf("%s renders YAML that does not parse: %v\n%s", name, err, doc)
			}
			if parsed == nil {
				continue // comments only
			}
			fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", name, strings.Trim(doc, "\n"))
		}
	}
	return out.String(), nil
}

func main() {
	var files valueFiles
	flag.Var(&files, "f", "a values file merged over values.yaml (repeatable)")
	release := flag.String("name", "xtrain", "the release name (.Release.Name)")
	namespace := flag.String("namespace", "default", "the release namespace (.Release.Namespace)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: helmrender [-f values.yaml]... [--name RELEASE] [--namespace NS] CHART_DIR")
		os.Exit(2)
	}
	text, err := render(flag.Arg(0), files, *release, *namespace)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helmrender:", err)
		os.Exit(1)
	}
	fmt.Print(text)
}
