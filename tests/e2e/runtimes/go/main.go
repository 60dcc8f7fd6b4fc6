// A compiled custom-runtime bootstrap: the Lambda Runtime API loop, standard library only.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	base := "http://" + os.Getenv("AWS_LAMBDA_RUNTIME_API") + "/2018-06-01/runtime/invocation/"
	for {
		next, err := http.Get(base + "next")
		if err != nil {
			fmt.Fprintln(os.Stderr, "next:", err)
			os.Exit(1)
		}
		event, _ := io.ReadAll(next.Body)
		next.Body.Close()
		id := next.Header.Get("Lambda-Runtime-Aws-Request-Id")
		answer, _ := json.Marshal(map[string]any{
			"runtime":    "go",
			"request_id": id,
			"deadline":   next.Header.Get("Lambda-Runtime-Deadline-Ms"),
			"handler":    os.Getenv("_HANDLER"),
			"event":      json.RawMessage(event),
		})
		fmt.Println("go bootstrap handled", id)
		reply, err := http.Post(base+id+"/response", "application/json", bytes.NewReader(answer))
		if err != nil {
			fmt.Fprintln(os.Stderr, "response:", err)
			os.Exit(1)
		}
		reply.Body.Close()
	}
}
