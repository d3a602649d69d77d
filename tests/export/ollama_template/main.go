// Renders an Ollama Modelfile TEMPLATE with Go's text/template, the engine Ollama uses, over the
// values Ollama passes to a chat template (.System, and .Messages with .Role and .Content, system
// messages included). Input on stdin: {"template": "...", "system": "...", "messages": [...]}.
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Input struct {
	Template string    `json:"template"`
	System   string    `json:"system"`
	Messages []Message `json:"messages"`
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("").Parse(in.Template))
	values := map[string]any{"System": in.System, "Messages": in.Messages}
	if err := tmpl.Execute(os.Stdout, values); err != nil {
		panic(err)
	}
}
