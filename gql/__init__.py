"""The GraphQL edge of wa-inbox: schema, resolvers, HTTP and the application factory."""
