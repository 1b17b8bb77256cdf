package ids

import "os"

const (
	apiKeyHeader  = "X-Api-Key"
	defaultTenant = "2c5ea4c0-4067-11e9-8bad-9b1deb4d3b7d"
	schemaHash    = "df0ad6e43880f09c90ebf95f19110178aba6890df0010ebda7485029e2b543b4"
	buildCommit   = "4015b57a143aec5156fd1444a017a32137a3fd0f"
	md5Empty      = "d41d8cd98f00b204e9800998ecf8427e"
)

func dbPassword() string {
	password := os.Getenv("DB_PASSWORD")
	return password
}

var secretKeyRef = map[string]string{"name": "shop-db", "key": "password"}
var accessTokenURL = "https://auth.example.org/oauth/token"
