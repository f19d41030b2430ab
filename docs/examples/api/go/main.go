// Admin, proxy and verify calls with Go's standard library (net/http).
// Needs TOLLGATE_ADMIN_TOKEN. Run: go run .
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
)

func call(url, path string, body any, token string) (map[string]any, http.Header) {
	payload, err := json.Marshal(body)
	check(err)
	request, err := http.NewRequest("POST", url+path, bytes.NewReader(payload))
	check(err)
	request.Header.Set("Content-Type", "application/json")
	if token != "" {
		request.Header.Set("Authorization", "Bearer "+token)
	}
	response, err := http.DefaultClient.Do(request)
	check(err)
	defer response.Body.Close()
	if response.StatusCode/100 != 2 {
		fail("%s: %s", path, response.Status)
	}
	var answer map[string]any
	check(json.NewDecoder(response.Body).Decode(&answer))
	return answer, response.Header
}

func check(err error) {
	if err != nil {
		fail("%v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func main() {
	url := os.Getenv("TOLLGATE_URL")
	if url == "" {
		url = "http://127.0.0.1:8080"
	}
	admin := os.Getenv("TOLLGATE_ADMIN_TOKEN")
	if admin == "" {
		fail("set TOLLGATE_ADMIN_TOKEN")
	}
	project := fmt.Sprintf("go-%d", os.Getpid())
	call(url, "/api/v1/projects", map[string]any{"id": project}, admin)
	created, _ := call(url, "/api/v1/keys", map[string]any{"project": project, "plan": "free"}, admin)
	key, _ := created["key"].(string)

	answer, headers := call(url, "/v1/chat/completions", map[string]any{
		"model":    "gpt-4o-mini",
		"messages": []map[string]string{{"role": "user", "content": "Hello"}},
	}, key)
	if answer["object"] != "chat.completion" {
		fail("not a chat completion: %v", answer)
	}
	if headers.Get("X-Ratelimit-Remaining") != "9" {
		fail("expected 9 requests left this minute, got %q", headers.Get("X-Ratelimit-Remaining"))
	}

	verdict, _ := call(url, "/api/v1/keys/verify", map[string]any{"key": key}, "")
	if verdict["valid"] != true || verdict["code"] != "VALID" {
		fail("not valid: %v", verdict)
	}
	fmt.Println("ok")
}
