// Zervigo unified authentication: issues and checks HS256 JWTs.
package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"flag"
	"log"
	"net/http"
	"os"
	"strings"
	"time"
)

var version = "1.8.0"

func sign(secret []byte, claims map[string]any) (string, error) {
	header := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	body, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	payload := header + "." + base64.RawURLEncoding.EncodeToString(body)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(payload))
	return payload + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil)), nil
}

func verify(secret []byte, token string) bool {
	i := strings.LastIndexByte(token, '.')
	if i < 0 {
		return false
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(token[:i]))
	want := base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
	return hmac.Equal([]byte(want), []byte(token[i+1:]))
}

func main() {
	port := flag.String("port", "8207", "listen port")
	flag.Parse()
	secret := []byte(os.Getenv("JWT_SECRET"))
	if len(secret) == 0 {
		log.Fatal("JWT_SECRET is not set")
	}

	http.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"status": "ok", "version": version})
	})
	http.HandleFunc("/api/v1/token", func(w http.ResponseWriter, r *http.Request) {
		var req struct{ User string `json:"user"` }
		if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&req) != nil || req.User == "" {
			http.Error(w, "POST {\"user\": ...}", http.StatusBadRequest)
			return
		}
		tok, err := sign(secret, map[string]any{"sub": req.User, "exp": time.Now().Add(time.Hour).Unix()})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"token": tok})
	})
	http.HandleFunc("/api/v1/verify", func(w http.ResponseWriter, r *http.Request) {
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !verify(secret, tok) {
			http.Error(w, "invalid token", http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	log.Printf("zervigo-auth %s listening on :%s", version, *port)
	log.Fatal(http.ListenAndServe(":"+*port, nil))
}
